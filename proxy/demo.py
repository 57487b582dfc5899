"""``shadowproxy demo``: the proxy's main job, end to end, on the local PostgreSQL.

What it does, in order:

1. Finds a PostgreSQL server at ``--pg`` (default 127.0.0.1:5432).  If nothing
   answers there and an ``initdb`` is on PATH or under /usr/lib/postgresql/*/bin,
   it starts a throwaway cluster in a temporary directory (as an unprivileged user
   when run as root: initdb refuses root) and stops it at the end.
2. Recreates the databases ``shadow_old`` and ``shadow_new`` and loads the same
   small schema and seed rows into both, directly (not through the proxy).
3. Starts ``shadowproxy serve`` as a subprocess in dual-write mode between them,
   on free loopback ports, and waits for ``/healthz``.
4. Drives a mixed workload through the proxy with asyncpg: point reads,
   aggregates, inserts, updates, deletes, explicit transactions (some rolled back
   on purpose, one failing on a unique violation, one with a savepoint rolled
   back), a multi-statement simple query and one prepared statement reused.
5. Waits for the mirror to drain, compares every table on both databases (row
   count + md5 of every row, computed by PostgreSQL), and prints a report built
   from the workload's own counters, the proxy's ``/metrics`` and ``/status``.

Exit status 0 when every table is identical and the proxy saw no divergence.
The databases are left in place so they can be inspected; the temporary
directory (journal, divergence log, proxy log) is removed unless something went
wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import math
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

PROG = "shadowproxy demo"
PG_USER = "postgres"
TABLES = ("customers", "orders", "order_events")
SEED_CUSTOMERS = 20
SEED_ORDERS = 60
# Rows a client inserts get ids from its own range, far above the seed rows.
CLIENT_ID_SPAN = 1_000_000
DRAIN_TIMEOUT = 120.0
PROXY_START_TIMEOUT = 20.0

SCHEMA = """
CREATE TABLE customers (
    id    serial PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL
);
CREATE TABLE order_events (
    id       bigserial PRIMARY KEY,
    order_id integer NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind     text NOT NULL
);
CREATE INDEX order_events_order_id ON order_events (order_id);
"""

# Every seed row has an explicit id and deterministic values, so both stores
# start byte-for-byte identical (no sequence, clock or random value involved).
SEED = f"""
INSERT INTO customers (id, name, email)
SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {SEED_CUSTOMERS}) g;
INSERT INTO orders (id, customer_id, amount, status)
SELECT g, 1 + g % {SEED_CUSTOMERS}, (g * 37 % 1000) + 0.99, 'new'
FROM generate_series(1, {SEED_ORDERS}) g;
INSERT INTO order_events (id, order_id, kind)
SELECT g, g, 'created' FROM generate_series(1, {SEED_ORDERS}) g;
"""

STATUSES = ("paid", "shipped", "delivered", "cancelled")


class DemoError(Exception):
    """Something the demo cannot work around; the message is printed as is."""


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------- arguments


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _db_name(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use lower-case letters, digits and '_' (a plain identifier)"
        )
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Create shadow_old and shadow_new on a local PostgreSQL, run the proxy in "
            "dual-write between them, drive a mixed workload through it and check "
            "that both stores end up identical."
        ),
    )
    p.add_argument(
        "--pg",
        type=_host_port,
        default=("127.0.0.1", 5432),
        metavar="HOST:PORT",
        help="PostgreSQL server (user postgres, trust auth); when nothing answers there "
        "and initdb is available, a throwaway cluster is started (default 127.0.0.1:5432)",
    )
    p.add_argument(
        "--seconds", type=_positive_float, default=10.0, help="workload duration (default 10)"
    )
    p.add_argument(
        "--clients", type=_positive_int, default=4, help="concurrent clients (default 4)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the proxy running after the report, until Ctrl-C",
    )
    p.add_argument("--old-db", type=_db_name, default="shadow_old", help="old store database name")
    p.add_argument("--new-db", type=_db_name, default="shadow_new", help="new store database name")
    return p


# ------------------------------------------------------------------ small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback)
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _dsn(host: str, port: int, db: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"postgresql://{PG_USER}@{shown}:{port}/{db}"


def _fmt_seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < 1.0:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def _fmt_count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


# --------------------------------------------------------------- Prometheus text


@dataclass
class Metrics:
    """The samples of one /metrics scrape: name -> [(labels, value)]."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    _LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "{" in line:
                name, _, rest = line.partition("{")
                labels_text, _, value_text = rest.rpartition("}")
                labels = dict(cls._LABEL.findall(labels_text))
            else:
                name, _, value_text = line.partition(" ")
                labels = {}
            try:
                value = float(value_text.split()[0])
            except (ValueError, IndexError):
                continue
            samples[name].append((labels, value))
        return cls(dict(samples))

    def total(self, name: str, **match: str) -> float:
        return sum(
            v
            for labels, v in self.samples.get(name, [])
            if all(labels.get(k) == want for k, want in match.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, v in self.samples.get(name, []):
            out[labels.get(label, "")] += v
        return dict(out)

    def quantile(self, name: str, q: float) -> float | None:
        """Estimate a quantile from ``name_bucket`` like Prometheus' histogram_quantile."""
        buckets = sorted(
            (float(labels["le"]), v)
            for labels, v in self.samples.get(f"{name}_bucket", [])
            if "le" in labels
        )
        if not buckets or buckets[-1][1] <= 0:
            return None
        rank = q * buckets[-1][1]
        prev_le, prev_count = 0.0, 0.0
        for le, count in buckets:
            if count >= rank:
                if math.isinf(le):
                    return prev_le  # beyond the largest finite bucket: its bound
                if count == prev_count:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
            prev_le, prev_count = le, count
        return None

    def mean(self, name: str) -> float | None:
        count = self.total(f"{name}_count")
        return self.total(f"{name}_sum") / count if count else None


# ------------------------------------------------------------ the PostgreSQL side


@dataclass
class Server:
    host: str
    port: int
    throwaway: bool = False
    bindir: Path | None = None
    datadir: Path | None = None
    owner: dict[str, Any] = field(default_factory=dict)  # subprocess user/group kwargs


def _find_bindir() -> Path | None:
    """A directory with initdb, pg_ctl and postgres: PATH first, then the newest Debian one."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(p: str) -> int:
        v = Path(p).parent.parent.name
        return int(v) if v.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        candidates.append(Path(found).parent)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _unprivileged_owner() -> dict[str, Any]:
    """subprocess kwargs that drop root for initdb/pg_ctl (they refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise DemoError("running as root and no unprivileged user (postgres, nobody) to run initdb")


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def start_throwaway_cluster(workdir: Path, stack: contextlib.ExitStack) -> Server:
    bindir = _find_bindir()
    if bindir is None:
        raise DemoError(
            "no PostgreSQL answers and no initdb was found on PATH or under "
            "/usr/lib/postgresql/*/bin: start a server or pass --pg HOST:PORT"
        )
    owner = _unprivileged_owner()
    base = workdir / "pg"
    sockdir = base / "sock"
    datadir = base / "data"
    sockdir.mkdir(parents=True)
    if owner:
        os.chmod(workdir, 0o711)  # the cluster's owner must traverse into base/
        for d in (base, sockdir):
            os.chown(d, owner["user"], owner["group"])
    port = free_port()
    say(f"  initdb: {bindir / 'initdb'} -> {datadir}")
    log = base / "pg_ctl.log"
    run = _owned_runner(base, log, owner)
    run(
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        "initdb",
    )
    opts = (
        f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    )
    server = Server("127.0.0.1", port, True, bindir, datadir, owner)
    run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(base / "server.log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        ],
        "pg_ctl start",
    )
    stack.callback(stop_throwaway_cluster, server, run)
    return server


def _owned_runner(cwd: Path, log: Path, owner: dict[str, Any]) -> Any:
    def run(cmd: list[str], what: str) -> None:
        # Output goes to a file, never a pipe: the postmaster pg_ctl starts could
        # inherit a pipe and keep it open long after pg_ctl returned.
        with log.open("ab") as out:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=_pg_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **owner,
            )
        if proc.returncode != 0:
            raise DemoError(f"{what} failed (exit {proc.returncode}):\n{_tail(log)}")

    return run


def stop_throwaway_cluster(server: Server, run: Any) -> None:
    assert server.bindir is not None and server.datadir is not None
    say(f"stopping the throwaway PostgreSQL cluster on port {server.port}")
    try:
        run(
            [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "stop"],
            "pg_ctl stop",
        )
    except (DemoError, subprocess.TimeoutExpired) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)


async def _connect(host: str, port: int, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=host, port=port, user=PG_USER, database=database, timeout=10)


async def prepare_databases(server: Server, old_db: str, new_db: str) -> None:
    admin = await _connect(server.host, server.port, "postgres")
    try:
        for db in (old_db, new_db):
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in (old_db, new_db):
        conn = await _connect(server.host, server.port, db)
        try:
            async with conn.transaction():
                await conn.execute(SCHEMA)
                await conn.execute(SEED)
        finally:
            await conn.close()


@dataclass
class TableVerdict:
    table: str
    old: tuple[int, str]
    new: tuple[int, str]

    @property
    def identical(self) -> bool:
        return self.old == self.new


async def compare_stores(server: Server, old_db: str, new_db: str) -> list[TableVerdict]:
    async def digests(db: str) -> dict[str, tuple[int, str]]:
        conn = await _connect(server.host, server.port, db)
        try:
            out = {}
            for table in TABLES:
                row = await conn.fetchrow(
                    "SELECT count(*) AS n, "
                    "coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') AS digest "
                    f"FROM {table} t"
                )
                out[table] = (int(row["n"]), str(row["digest"]))
            return out
        finally:
            await conn.close()

    old, new = await asyncio.gather(digests(old_db), digests(new_db))
    return [TableVerdict(t, old[t], new[t]) for t in TABLES]


# ---------------------------------------------------------------------- the proxy


@dataclass
class Proxy:
    port: int
    admin_port: int
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    @property
    def divergence_log(self) -> Path:
        return Path(self.env["SHADOW_DIVERGENCE_LOG"])

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "shadowproxy"
        if os.access(script, os.X_OK):
            return [str(script), "serve"]
        return [sys.executable, "-m", "proxy.cli", "serve"]

    def start(self) -> None:
        env = dict(self.env)
        # For `python -m proxy.cli` from a source tree that is not installed.
        src = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches the demo only, which stops the
                # proxy itself, in order.
                start_new_session=True,
            )
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"the proxy exited with status {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            with contextlib.suppress(OSError):
                if http_get(f"{self.admin_url}/healthz", timeout=1)[0] == 200 and _answers(
                    "127.0.0.1", self.port
                ):
                    return
            time.sleep(0.05)
        raise DemoError(f"the proxy did not become healthy:\n{_tail(self.log_path)}")

    def status(self) -> dict[str, Any]:
        code, body = http_get(f"{self.admin_url}/status")
        if code != 200:
            raise DemoError(f"GET /status answered {code}")
        return dict(json.loads(body))

    def metrics(self) -> Metrics:
        code, body = http_get(f"{self.admin_url}/metrics")
        if code != 200:
            raise DemoError(f"GET /metrics answered {code}")
        return Metrics.parse(body.decode())

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT) -> tuple[dict[str, Any], float]:
        """Poll /status until nothing is queued, journaled or still being applied."""
        started = time.monotonic()
        st: dict[str, Any] = {}
        while time.monotonic() - started < timeout:
            st = self.status()
            if (
                st.get("mirror_queue_depth", 0) == 0
                and st.get("journal_backlog_units", 0) == 0
                and st.get("mirror_sessions", 0) == 0
            ):
                return st, time.monotonic() - started
            time.sleep(0.1)
        raise DemoError(
            f"the mirror did not drain within {timeout:.0f} s: "
            f"queue {st.get('mirror_queue_depth')}, journal {st.get('journal_backlog_units')}, "
            f"sessions {st.get('mirror_sessions')}, last error {st.get('last_mirror_error')!r}"
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc


def make_proxy(workdir: Path, server: Server, old_db: str, new_db: str) -> Proxy:
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(
        SHADOW_LISTEN=f"127.0.0.1:{port}",
        SHADOW_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        SHADOW_OLD_DSN=_dsn(server.host, server.port, old_db),
        SHADOW_NEW_DSN=_dsn(server.host, server.port, new_db),
        SHADOW_MODE="dual-write",
        SHADOW_JOURNAL_DIR=str(workdir / "journal"),
        SHADOW_DIVERGENCE_LOG=str(workdir / "divergences.jsonl"),
        SHADOW_STATE_FILE=str(workdir / "state" / "mode.json"),
        SHADOW_LOG_LEVEL="INFO",
    )
    return Proxy(port, admin_port, workdir, env)


# ------------------------------------------------------------------- the workload


class _RollBack(Exception):
    """Raised inside ``conn.transaction()`` to roll it back on purpose."""


@dataclass
class WorkloadStats:
    reads: int = 0
    writes: int = 0
    committed: int = 0  # explicit transactions committed
    autocommit_writes: int = 0  # write statements (or multi-statement queries) on their own
    rolled_back: int = 0  # explicit transactions rolled back on purpose
    failed_on_purpose: int = 0  # statements that failed as intended (unique violations)
    prepared_reuses: int = 0
    errors: list[str] = field(default_factory=list)  # anything unexpected
    elapsed: float = 0.0

    def add(self, other: WorkloadStats) -> None:
        self.reads += other.reads
        self.writes += other.writes
        self.committed += other.committed
        self.autocommit_writes += other.autocommit_writes
        self.rolled_back += other.rolled_back
        self.failed_on_purpose += other.failed_on_purpose
        self.prepared_reuses += other.prepared_reuses
        self.errors.extend(other.errors)

    @property
    def statements(self) -> int:
        return self.reads + self.writes


class Client:
    """One application connection doing a random mix of work, through the proxy.

    Every row this client inserts gets an EXPLICIT id from the client's own range
    (customers, orders and events alike), never a serial/bigserial default: the
    proxy mirrors statements, and pinning values the authoritative store
    generates (sequence defaults) is a later feature, so a default-generated key
    could differ between the stores.  The client also only updates and deletes
    rows it inserted itself: with the ``async`` mirror, writes are ordered per
    session only, so two sessions racing on one row could reach the new store in
    another order (the design's documented limit, caught by the comparator).
    """

    def __init__(self, index: int, conn: asyncpg.Connection) -> None:
        self.index = index
        self.conn = conn
        self.rng = random.Random(1000 + index)
        base = (index + 1) * CLIENT_ID_SPAN
        self.next_customer = base
        self.next_order = base
        self.next_event = base
        self.customers: list[int] = []
        self.orders: list[int] = []
        self.stats = WorkloadStats()
        self.bump: Any = None  # the prepared statement, reused

    def _customer_id(self) -> int:
        self.next_customer += 1
        return self.next_customer

    def _order_id(self) -> int:
        self.next_order += 1
        return self.next_order

    def _event_id(self) -> int:
        self.next_event += 1
        return self.next_event

    def _any_customer(self) -> int:
        if self.customers and self.rng.random() < 0.5:
            return self.rng.choice(self.customers)
        return self.rng.randint(1, SEED_CUSTOMERS)

    def _amount(self) -> Decimal:
        return Decimal(self.rng.randint(100, 99_999)) / 100

    async def prepare(self) -> None:
        self.bump = await self.conn.prepare("UPDATE orders SET amount = amount + $1 WHERE id = $2")

    async def run(self, deadline: float) -> WorkloadStats:
        ops = [
            (self.read_order, 25),
            (self.read_aggregate, 8),
            (self.read_customer_orders, 7),
            (self.new_order, 18),
            (self.new_customer, 4),
            (self.update_status, 12),
            (self.bump_amount, 8),
            (self.delete_order, 5),
            (self.rollback_on_purpose, 5),
            (self.failing_transaction, 3),
            (self.savepoint_transaction, 3),
            (self.multi_statement_query, 2),
            (self.batch_events, 3),
            (self.copy_events, 1),
        ]
        funcs = [f for f, _ in ops]
        weights = [w for _, w in ops]
        await self.prepare()
        while time.monotonic() < deadline:
            op = self.rng.choices(funcs, weights)[0]
            try:
                await op()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self.stats.errors.append(f"client {self.index}: {op.__name__}: {exc!r}")
                if len(self.stats.errors) >= 5 or self.conn.is_closed():
                    break
        return self.stats

    # -- reads ---------------------------------------------------------------------

    async def read_order(self) -> None:
        pool = self.orders if self.orders and self.rng.random() < 0.5 else None
        oid = self.rng.choice(pool) if pool else self.rng.randint(1, SEED_ORDERS)
        await self.conn.fetchrow(
            "SELECT id, customer_id, amount, status FROM orders WHERE id = $1", oid
        )
        self.stats.reads += 1

    async def read_aggregate(self) -> None:
        await self.conn.fetch(
            "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status"
        )
        self.stats.reads += 1

    async def read_customer_orders(self) -> None:
        # A read-only transaction: BEGIN READ ONLY ... COMMIT around two reads.
        async with self.conn.transaction(readonly=True):
            cid = self._any_customer()
            await self.conn.fetchrow("SELECT name, email FROM customers WHERE id = $1", cid)
            await self.conn.fetch(
                "SELECT o.id, o.amount, count(e.id) AS events FROM orders o "
                "LEFT JOIN order_events e ON e.order_id = o.id "
                "WHERE o.customer_id = $1 GROUP BY o.id ORDER BY o.id",
                cid,
            )
        self.stats.reads += 2
        self.stats.committed += 1

    # -- writes --------------------------------------------------------------------

    async def _insert_order(self) -> int:
        oid = self._order_id()
        await self.conn.execute(
            "INSERT INTO orders (id, customer_id, amount, status) VALUES ($1, $2, $3, 'new')",
            oid,
            self._any_customer(),
            self._amount(),
        )
        await self.conn.execute(
            "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, 'created')",
            self._event_id(),
            oid,
        )
        self.stats.writes += 2
        return oid

    async def new_order(self) -> None:
        async with self.conn.transaction():
            oid = await self._insert_order()
        self.orders.append(oid)
        self.stats.committed += 1

    async def new_customer(self) -> None:
        cid = self._customer_id()
        await self.conn.execute(
            "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3)",
            cid,
            f"client {self.index} customer {cid}",
            f"c{cid}@example.org",
        )
        self.customers.append(cid)
        self.stats.writes += 1
        self.stats.autocommit_writes += 1

    async def update_status(self) -> None:
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        status = self.rng.choice(STATUSES)
        if self.rng.random() < 0.5:
            # Autocommit update on its own.
            await self.conn.execute("UPDATE orders SET status = $1 WHERE id = $2", status, oid)
            self.stats.writes += 1
            self.stats.autocommit_writes += 1
            return None
        async with self.conn.transaction():
            await self.conn.execute("UPDATE orders SET status = $1 WHERE id = $2", status, oid)
            await self.conn.execute(
                "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, $3)",
                self._event_id(),
                oid,
                status,
            )
        self.stats.writes += 2
        self.stats.committed += 1
        return None

    async def bump_amount(self) -> None:
        if not self.orders:
            return await self.new_order()
        # The same prepared statement, bound with new values each time.
        await self.bump.fetch(
            Decimal(self.rng.randint(-500, 500)) / 100, self.rng.choice(self.orders)
        )
        self.stats.writes += 1
        self.stats.autocommit_writes += 1
        self.stats.prepared_reuses += 1
        return None

    async def delete_order(self) -> None:
        if len(self.orders) < 3:
            return await self.new_order()
        oid = self.orders.pop(self.rng.randrange(len(self.orders)))
        async with self.conn.transaction():
            await self.conn.execute("DELETE FROM order_events WHERE order_id = $1", oid)
            await self.conn.execute("DELETE FROM orders WHERE id = $1", oid)
        self.stats.writes += 2
        self.stats.committed += 1
        return None

    async def rollback_on_purpose(self) -> None:
        # Work the application abandons: nothing of it may reach either store.
        # The ids stay consumed, so a later insert never reuses them.
        try:
            async with self.conn.transaction():
                await self._insert_order()
                if self.orders:
                    await self.conn.execute(
                        "UPDATE orders SET status = 'cancelled' WHERE id = $1",
                        self.rng.choice(self.orders),
                    )
                    self.stats.writes += 1
                raise _RollBack
        except _RollBack:
            self.stats.rolled_back += 1

    async def failing_transaction(self) -> None:
        # A transaction that fails half-way (unique violation on a seed email):
        # the store rolls all of it back, so the mirror must apply none of it.
        try:
            async with self.conn.transaction():
                await self._insert_order()
                await self.conn.execute(
                    "INSERT INTO customers (id, name, email) VALUES ($1, 'dup', $2)",
                    self._customer_id(),
                    f"c{self.rng.randint(1, SEED_CUSTOMERS)}@example.com",
                )
        except asyncpg.UniqueViolationError:
            self.stats.rolled_back += 1
            self.stats.failed_on_purpose += 1
            self.stats.writes += 1

    async def savepoint_transaction(self) -> None:
        # A nested transaction (SAVEPOINT) fails and is rolled back to the
        # savepoint; the outer transaction goes on and commits.
        async with self.conn.transaction():
            oid = await self._insert_order()
            try:
                async with self.conn.transaction():
                    await self.conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", oid)
                    await self.conn.execute(
                        "INSERT INTO customers (id, name, email) VALUES ($1, 'dup', $2)",
                        self._customer_id(),
                        f"c{self.rng.randint(1, SEED_CUSTOMERS)}@example.com",
                    )
            except asyncpg.UniqueViolationError:
                self.stats.failed_on_purpose += 1
            await self.conn.execute(
                "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, 'reviewed')",
                self._event_id(),
                oid,
            )
        self.orders.append(oid)
        self.stats.writes += 3  # plus the two of _insert_order
        self.stats.committed += 1

    async def multi_statement_query(self) -> None:
        # Without parameters asyncpg sends a simple Query: two statements, one
        # implicit transaction.
        if not self.orders:
            return await self.new_order()
        oid, eid = self.rng.choice(self.orders), self._event_id()
        await self.conn.execute(
            f"UPDATE orders SET status = 'archived' WHERE id = {oid}; "
            f"INSERT INTO order_events (id, order_id, kind) VALUES ({eid}, {oid}, 'archived')"
        )
        self.stats.writes += 2
        self.stats.autocommit_writes += 1
        return None

    async def batch_events(self) -> None:
        # executemany: a pipeline of Bind/Execute under one Sync, one implicit
        # transaction on the store.
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        rows = [(self._event_id(), oid, "note") for _ in range(self.rng.randint(2, 5))]
        await self.conn.executemany(
            "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, $3)", rows
        )
        self.stats.writes += len(rows)
        self.stats.autocommit_writes += 1
        return None

    async def copy_events(self) -> None:
        # COPY ... FROM STDIN (binary), the way asyncpg bulk-loads.
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        rows = [(self._event_id(), oid, "imported") for _ in range(self.rng.randint(3, 10))]
        await self.conn.copy_records_to_table(
            "order_events", records=rows, columns=["id", "order_id", "kind"]
        )
        self.stats.writes += 1
        self.stats.autocommit_writes += 1
        return None


async def run_workload(proxy: Proxy, database: str, clients: int, seconds: float) -> WorkloadStats:
    conns = await asyncio.gather(
        *(_connect("127.0.0.1", proxy.port, database) for _ in range(clients))
    )
    total = WorkloadStats()
    try:
        started = time.monotonic()
        deadline = started + seconds
        results = await asyncio.gather(*(Client(i, c).run(deadline) for i, c in enumerate(conns)))
        total.elapsed = time.monotonic() - started
        for r in results:
            total.add(r)
    finally:
        # Closing the sessions lets their mirror queues finish and close.
        await asyncio.gather(*(c.close(timeout=10) for c in conns), return_exceptions=True)
    return total


# ------------------------------------------------------------------------ report


@dataclass
class Outcome:
    stats: WorkloadStats
    metrics: Metrics
    status: dict[str, Any]
    drain_seconds: float
    verdicts: list[TableVerdict]

    @property
    def divergences(self) -> int:
        from_metrics = int(self.metrics.total("shadowproxy_divergences_total"))
        from_status = sum(int(v) for v in (self.status.get("divergences") or {}).values())
        return max(from_metrics, from_status)

    @property
    def ok(self) -> bool:
        return (
            all(v.identical for v in self.verdicts)
            and self.divergences == 0
            and not self.stats.errors
            and int(self.status.get("rejected_units", 0) or 0) == 0
        )


def print_report(
    outcome: Outcome,
    proxy: Proxy,
    server: Server,
    old_db: str,
    new_db: str,
    clients: int,
    keep: bool = False,
) -> None:
    s, mx, st = outcome.stats, outcome.metrics, outcome.status
    secs = max(s.elapsed, 1e-9)
    say()
    say(f"== workload: {clients} asyncpg clients for {s.elapsed:.1f} s, through the proxy ==")
    txns = s.committed + s.autocommit_writes
    say(
        f"  transactions   {txns:,} committed ({txns / secs:,.0f}/s): "
        f"{s.committed:,} explicit, {s.autocommit_writes:,} autocommit writes"
    )
    say(
        f"                 {s.rolled_back:,} rolled back on purpose "
        f"({s.failed_on_purpose:,} statements failed as intended)"
    )
    say(
        f"  statements     {s.statements:,} ({s.statements / secs:,.0f}/s): "
        f"{s.reads:,} reads, {s.writes:,} writes; prepared statement reused {s.prepared_reuses:,}x"
    )
    if s.errors:
        say(f"  CLIENT ERRORS  {len(s.errors)}")
        for e in s.errors[:5]:
            say(f"    {e}")

    say()
    say("== proxy (from /metrics and /status) ==")
    kinds = mx.by_label("shadowproxy_statements_total", "kind")
    relayed = sum(kinds.values())
    detail = ", ".join(f"{k} {_fmt_count(v)}" for k, v in sorted(kinds.items()) if v)
    say(f"  relayed        {_fmt_count(relayed)} statements ({detail})")
    applied = mx.total("shadowproxy_mirror_applied_units_total")
    mstmts = mx.total("shadowproxy_mirror_statements_total")
    say(
        f"  mirrored       {_fmt_count(applied)} units (transactions) applied to the new store, "
        f"{_fmt_count(mstmts)} statements"
    )
    p50 = mx.quantile("shadowproxy_mirror_lag_seconds", 0.5)
    p99 = mx.quantile("shadowproxy_mirror_lag_seconds", 0.99)
    mean = mx.mean("shadowproxy_mirror_lag_seconds")
    say(
        f"  mirror lag     p50 ~{_fmt_seconds(p50)}, p99 ~{_fmt_seconds(p99)} "
        f"(mean {_fmt_seconds(mean)}; from commit on old to apply on new)"
    )
    say(f"  drained        {outcome.drain_seconds:.1f} s after the workload ended")
    failures = mx.by_label("shadowproxy_mirror_failures_total", "reason")
    failed = {k: v for k, v in failures.items() if v}
    journal_line = f"  journal        backlog {st.get('journal_backlog_units', 0)} units"
    appended = mx.total("shadowproxy_journal_appended_units_total")
    if appended:
        journal_line += (
            f", {_fmt_count(appended)} units went through it "
            f"({', '.join(f'{k} {_fmt_count(v)}' for k, v in sorted(failed.items()))})"
        )
    say(journal_line)
    div = outcome.divergences
    by_kind = mx.by_label("shadowproxy_divergences_total", "kind")
    kinds_text = ", ".join(f"{k} {_fmt_count(v)}" for k, v in sorted(by_kind.items()) if v)
    say(f"  divergences    {div}" + (f" ({kinds_text})" if kinds_text else "  (expected 0)"))
    rejected = int(st.get("rejected_units", 0) or 0)
    if rejected:
        say(f"  REJECTED       {rejected} units refused by the new store (kept for repair)")

    say()
    say("== stores compared (row count + md5 of every row, computed by PostgreSQL) ==")
    width = max(len(t) for t in TABLES)
    for v in outcome.verdicts:
        if v.identical:
            say(f"  {v.table:<{width}}  IDENTICAL  {v.old[0]:,} rows")
        else:
            say(
                f"  {v.table:<{width}}  DIFFERENT  old {v.old[0]:,} rows md5 {v.old[1][:12]}, "
                f"new {v.new[0]:,} rows md5 {v.new[1][:12]}"
            )

    say()
    say("== where to look ==")
    live = "" if keep else "  (while the proxy runs: use --keep to browse)"
    say(f"  metrics         {proxy.admin_url}/metrics{live}")
    say(f"  status          {proxy.admin_url}/status")
    kept = "" if keep or not outcome.ok else "  (removed at exit when all is well)"
    say(f"  divergence log  {proxy.divergence_log}{kept}")
    say(f"  proxy log       {proxy.log_path}")
    where = f"-h {server.host} -p {server.port} -U {PG_USER}"
    if server.throwaway:
        say(
            f"  databases       {old_db} and {new_db} live in the throwaway cluster, "
            "which is removed at the end"
        )
    else:
        say(f"  databases       {old_db} and {new_db} are left in place: psql {where} -d {old_db}")

    say()
    if outcome.ok:
        say(
            f"RESULT: OK: every table IDENTICAL on {old_db} and {new_db}, "
            f"{div} divergences, {_fmt_count(applied)} units mirrored."
        )
    else:
        reasons = []
        if not all(v.identical for v in outcome.verdicts):
            reasons.append("tables differ")
        if div:
            reasons.append(f"{div} divergences")
        if rejected:
            reasons.append(f"{rejected} rejected units")
        if s.errors:
            reasons.append(f"{len(s.errors)} client errors")
        say(f"RESULT: FAILED: {', '.join(reasons)}.")


# -------------------------------------------------------------------------- main


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _wait_for_ctrl_c(proxy: Proxy, database: str) -> None:
    say()
    say(f"--keep: the proxy keeps running on 127.0.0.1:{proxy.port} in dual-write mode.")
    say(f"  admin          {proxy.admin_url}/status   {proxy.admin_url}/metrics")
    say(f"  connect        psql -h 127.0.0.1 -p {proxy.port} -U {PG_USER} -d {database}")
    say("                 (give inserted rows explicit ids: serial defaults are not pinned yet)")
    say("Press Ctrl-C to stop it.")
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and proxy.proc is not None and proxy.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if proxy.proc is not None and proxy.proc.poll() is not None:
        say(f"the proxy exited by itself (status {proxy.proc.returncode})")


def _stop_proxy(proxy: Proxy) -> None:
    say("stopping the proxy (SIGTERM)")
    rc = proxy.stop()
    if rc not in (0, None):
        print(
            f"{PROG}: the proxy exited with status {rc}:\n{_tail(proxy.log_path)}",
            file=sys.stderr,
        )


def run_demo(args: argparse.Namespace) -> int:
    host, port = args.pg
    if args.old_db == args.new_db:
        raise DemoError("--old-db and --new-db must differ")
    keep_workdir = False
    workdir = Path(tempfile.mkdtemp(prefix="shadowproxy-demo-"))

    def cleanup_workdir() -> None:
        if keep_workdir:
            shutil.rmtree(workdir / "pg", ignore_errors=True)
            say(f"kept {workdir} (proxy log, divergence log, journal) for inspection")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    with contextlib.ExitStack() as stack:
        stack.callback(cleanup_workdir)

        say(f"shadowproxy demo: dual-write from {args.old_db} to {args.new_db}")
        if _answers(host, port):
            server = Server(host, port)
            say(f"  PostgreSQL     {host}:{port}")
        else:
            say(f"  nothing answers on {host}:{port}: starting a throwaway PostgreSQL cluster")
            server = start_throwaway_cluster(workdir, stack)
            say(f"  PostgreSQL     throwaway cluster on 127.0.0.1:{server.port} (in {workdir})")

        try:
            _run(prepare_databases(server, args.old_db, args.new_db))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise DemoError(
                f"cannot prepare the databases on {server.host}:{server.port} "
                f"as user {PG_USER}: {exc}"
            ) from exc
        say(
            f"  databases      {args.old_db} and {args.new_db} recreated with the same schema "
            f"and seed ({', '.join(TABLES)})"
        )

        proxy = make_proxy(workdir, server, args.old_db, args.new_db)
        stack.callback(_stop_proxy, proxy)
        proxy.start()
        say(f"  proxy          127.0.0.1:{proxy.port}, mode dual-write, admin {proxy.admin_url}")
        say(f"  workload       {args.clients} clients for {args.seconds:g} s ...")
        keep_workdir = True  # until the report says all is well

        try:
            stats = _run(run_workload(proxy, args.old_db, args.clients, args.seconds))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise DemoError(
                f"cannot connect through the proxy: {exc!r}\n{_tail(proxy.log_path)}"
            ) from exc
        say("  waiting for the mirror to drain ...")
        status, drain = proxy.wait_drained()
        metrics = proxy.metrics()
        verdicts = _run(compare_stores(server, args.old_db, args.new_db))
        outcome = Outcome(stats, metrics, status, drain, verdicts)
        print_report(outcome, proxy, server, args.old_db, args.new_db, args.clients, args.keep)
        keep_workdir = not outcome.ok

        if args.keep:
            _wait_for_ctrl_c(proxy, args.old_db)
        return 0 if outcome.ok else 1
    return 1  # not reached (the with block returns or raises)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        if argv[:1] == ["demo"]:  # called as `shadowproxy demo ...`
            argv = argv[1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run_demo(args)
    except DemoError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
