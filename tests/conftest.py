"""Shared fixtures: unique databases on the real servers, and a real proxy process.

Every test gets databases with unique names on the PostgreSQL server at
127.0.0.1:5432 and drops them afterwards.  ``proxy_factory`` starts
``shadowproxy serve`` as a subprocess on free loopback ports (exactly as a
user would) and stops it by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
ROOT = Path(__file__).resolve().parent.parent
SHADOWPROXY = str(Path(sys.executable).parent / "shadowproxy")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this run: each probe socket
    is closed at once, so two calls in a row may be offered the same port (a proxy
    then found its admin port taken by its own listener)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a compiled hot path older than its sources (setup.py): the
    compiled modules shadow the .py files, so an edit would otherwise go untested."""
    compiled = list(ROOT.glob("proxy/**/*.so"))
    if not compiled:
        return  # plain Python (SHADOWPROXY_PURE=1 or never compiled)
    stamp = Path(sys.executable).parent.parent / ".compiled"
    built = stamp.stat().st_mtime if stamp.exists() else 0.0
    stale = sorted(
        str(py.relative_to(ROOT))
        for py in (so.with_name(so.name.split(".", 1)[0] + ".py") for so in compiled)
        if py.exists() and py.stat().st_mtime > built
    )
    if stale:
        pytest.exit(f"compiled modules older than {', '.join(stale)}: run `make compile`", 2)


def pg_dsn(db: str, port: int = PG_PORT, host: str = PG_HOST, user: str = PG_USER) -> str:
    return f"postgresql://{user}@{host}:{port}/{db}"


def admin_conn(port: int = PG_PORT) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=port, user=PG_USER, dbname="postgres", autocommit=True
    )


@dataclass
class PgPair:
    old: str  # database names
    new: str
    port: int = PG_PORT

    def connect(self, which: str, **kw: Any) -> psycopg.Connection[Any]:
        db = self.old if which == "old" else self.new
        return psycopg.connect(host=PG_HOST, port=self.port, user=PG_USER, dbname=db, **kw)

    def run_both(self, sql: str) -> None:
        """Run the same setup SQL directly on both stores (schema, seed data)."""
        for which in ("old", "new"):
            with self.connect(which, autocommit=True) as c:
                c.execute(sql)  # type: ignore[arg-type]

    def table_digest(
        self, which: str, table: str, columns: str = "*", order: str = "whole_row_::text"
    ) -> tuple[int, str]:
        """(row count, md5 of all rows in a stable order), computed by the database.

        The default order is the rows' text, not the physical order (which two
        stores fed by concurrent sessions need not share).
        """
        with self.connect(which) as c:
            row = c.execute(
                # The row alias must not be a column name of the table (a column "r"
                # would be digested instead of the whole row).
                f"SELECT count(*), coalesce(md5(string_agg(whole_row_::text, '|' ORDER BY {order})), '') "  # noqa: S608
                f"FROM (SELECT {columns} FROM {table}) whole_row_"
            ).fetchone()
            assert row is not None
            return int(row[0]), str(row[1])

    def assert_same(
        self, table: str, columns: str = "*", order: str = "whole_row_::text"
    ) -> tuple[int, str]:
        old = self.table_digest("old", table, columns, order)
        new = self.table_digest("new", table, columns, order)
        assert old == new, f"{table}: old {old} != new {new}"
        return old


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    tag = uuid.uuid4().hex[:10]
    pair = PgPair(f"sp_old_{tag}", f"sp_new_{tag}")
    with admin_conn() as c:
        c.execute(f"CREATE DATABASE {pair.old}")  # type: ignore[arg-type]
        c.execute(f"CREATE DATABASE {pair.new}")  # type: ignore[arg-type]
    yield pair
    with admin_conn() as c:
        for db in (pair.old, pair.new):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")  # type: ignore[arg-type]


@dataclass
class ProxyProcess:
    port: int
    admin_port: int
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def divergence_log(self) -> Path:
        return Path(self.env["SHADOW_DIVERGENCE_LOG"])

    def divergences(self) -> list[dict[str, Any]]:
        if not self.divergence_log.exists():
            return []
        return [json.loads(line) for line in self.divergence_log.read_text().splitlines() if line]

    def http(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=5
            ) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def status(self) -> dict[str, Any]:
        code, body = self.http("/status")
        assert code == 200
        return dict(json.loads(body))

    def dsn(self, db: str) -> str:
        return pg_dsn(db, port=self.port)

    def start(self) -> None:
        self.log_path = self.workdir / f"proxy-{self.port}.log"
        self.proc = subprocess.Popen(
            [SHADOWPROXY, "serve"],
            env=self.env,
            cwd=self.workdir,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.http("/healthz")[0] == 200:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not become ready: {self.log_path.read_text()[-2000:]}")

    def wait_mirror_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until nothing is queued for the mirror nor in the journal."""
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            if (
                st["mirror_queue_depth"] == 0
                and st["journal_backlog_units"] == 0
                and st.get("mirror_sessions", 0) == 0
            ):
                return st
            time.sleep(0.05)
        raise AssertionError(f"mirror did not drain: {st}")

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = int(self.proc.returncode)
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ProxyProcess] = []

    def make(
        old_dsn: str,
        new_dsn: str | None,
        mode: str = "dual-write",
        start: bool = True,
        **extra: str,
    ) -> ProxyProcess:
        port, admin_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env.update(
            SHADOW_LISTEN=f"127.0.0.1:{port}",
            SHADOW_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
            SHADOW_OLD_DSN=old_dsn,
            SHADOW_MODE=mode,
            SHADOW_JOURNAL_DIR=str(tmp_path / f"journal-{port}"),
            SHADOW_DIVERGENCE_LOG=str(tmp_path / f"divergence-{port}.jsonl"),
            SHADOW_LOG_LEVEL="INFO",
        )
        if new_dsn:
            env["SHADOW_NEW_DSN"] = new_dsn
        env.update(
            {
                k.upper() if k.startswith("SHADOW_") else f"SHADOW_{k.upper()}": v
                for k, v in extra.items()
            }
        )
        p = ProxyProcess(port, admin_port, env, tmp_path)
        started.append(p)
        if start:
            p.start()
        return p

    yield make
    for p in started:  # all at once: each shutdown may wait for its own drain
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in started:
        p.stop()


@pytest.fixture
def dual_proxy(pg_pair: PgPair, proxy_factory: Any) -> ProxyProcess:
    """A proxy in dual-write between the two databases of ``pg_pair``."""
    return proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new))  # type: ignore[no-any-return]
