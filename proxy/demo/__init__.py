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
   Meanwhile (unless ``--no-ladder``) it walks the cutover ladder through the
   admin API, up to new-only and back to dual-write (see ``ladder.py``): open
   sessions move their reads, then their writes, to the new store and back.
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
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from proxy.demo._common import (
    DRAIN_TIMEOUT,
    PG_USER,
    PROG,
    PROXY_START_TIMEOUT,
    TABLES,
    DemoError,
    _answers,
    _db_name,
    _dsn,
    _fmt_count,
    _fmt_seconds,
    _host_port,
    _positive_float,
    _positive_int,
    _tail,
    free_port,
    http_get,
    say,
)
from proxy.demo.ladder import STEPS, LadderWalk
from proxy.demo.stores import (
    Server,
    TableVerdict,
    compare_stores,
    prepare_databases,
    start_throwaway_cluster,
)
from proxy.demo.workload import WorkloadStats, run_workload


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
    p.add_argument(
        "--no-ladder",
        action="store_true",
        help="stay in dual-write (by default the demo walks the mode ladder to new-only "
        "and back while the workload runs)",
    )
    p.add_argument("--old-db", type=_db_name, default="shadow_old", help="old store database name")
    p.add_argument("--new-db", type=_db_name, default="shadow_new", help="new store database name")
    return p


# ------------------------------------------------------------------ small helpers


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


def make_proxy(workdir: Path, server: Server, old_db: str, new_db: str, token: str = "") -> Proxy:
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
    if token:
        env["SHADOW_ADMIN_TOKEN"] = token
    return Proxy(port, admin_port, workdir, env)


# ------------------------------------------------------------------- the workload


@dataclass
class Outcome:
    stats: WorkloadStats
    metrics: Metrics
    status: dict[str, Any]
    drain_seconds: float
    verdicts: list[TableVerdict]
    ladder: LadderWalk | None = None

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
            and self.ladder_ok
        )

    @property
    def ladder_ok(self) -> bool:
        walk = self.ladder
        if walk is None:
            return True
        failed = self.metrics.total("shadowproxy_authority_switches_total", outcome="failed")
        return not walk.error and len(walk.done) == len(walk.steps) and not failed


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

    if outcome.ladder is not None:
        _print_ladder(outcome.ladder, mx)

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
        if not outcome.ladder_ok:
            reasons.append("the mode ladder walk did not complete")
        say(f"RESULT: FAILED: {', '.join(reasons)}.")


def _print_ladder(walk: LadderWalk, mx: Metrics) -> None:
    say()
    say("== cutover ladder (POST /mode while the workload ran) ==")
    previous = "dual-write"
    for step in walk.done:
        ms = step.seconds * 1000
        say(f"  {previous:>11} -> {step.mode:<11} epoch {step.epoch}, applied in {ms:.0f} ms")
        previous = step.mode
    if walk.error:
        say(f"  STOPPED        {walk.error}")
    moved = mx.by_label("shadowproxy_authority_switches_total", "store")
    failed = mx.total("shadowproxy_authority_switches_total", outcome="failed")
    routed = mx.total("shadowproxy_statements_total", kind="read", store="new")
    total = mx.total("shadowproxy_authority_switches_total", outcome="moved")
    say(
        f"  sessions moved their writes {_fmt_count(total)} times (to new "
        f"{_fmt_count(moved.get('new', 0))}, back to old {_fmt_count(moved.get('old', 0))}), "
        f"{_fmt_count(failed)} failed; {_fmt_count(routed)} reads served by the new store"
    )


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

        token = "" if args.no_ladder else secrets.token_hex(16)
        proxy = make_proxy(workdir, server, args.old_db, args.new_db, token)
        stack.callback(_stop_proxy, proxy)
        proxy.start()
        say(f"  proxy          127.0.0.1:{proxy.port}, mode dual-write, admin {proxy.admin_url}")
        say(f"  workload       {args.clients} clients for {args.seconds:g} s ...")
        keep_workdir = True  # until the report says all is well

        walk: LadderWalk | None = None
        if not args.no_ladder:
            walk = LadderWalk(
                proxy.admin_url, token, args.seconds * 0.15, args.seconds * 0.7 / len(STEPS)
            )
            say(f"  ladder         dual-write -> {' -> '.join(walk.steps)}, meanwhile")
            walk.start()
        try:
            stats = _run(run_workload(proxy.port, args.old_db, args.clients, args.seconds))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise DemoError(
                f"cannot connect through the proxy: {exc!r}\n{_tail(proxy.log_path)}"
            ) from exc
        if walk is not None:
            walk.join()
        say("  waiting for the mirror to drain ...")
        status, drain = proxy.wait_drained()
        metrics = proxy.metrics()
        verdicts = _run(compare_stores(server, args.old_db, args.new_db))
        outcome = Outcome(stats, metrics, status, drain, verdicts, walk)
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
