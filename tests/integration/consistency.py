"""Shared pieces of the mirror-consistency tests: a proxy per consistency level,
clients per wire protocol, and comparisons of the two stores done by the databases.

The stores are compared on every column of every table: each database renders
its rows as text (the whole row cast to text), sorts them by that text and
hashes them, so a table without a key (an audit log, ``pgbench_history``) is
compared as a multiset of whole rows.  Only when the hashes differ are the rows
downloaded, to show which rows differ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psycopg
import pytest

from tests.conftest import (
    PG_HOST,
    PG_USER,
    SHADOWPROXY,
    PgPair,
    ProxyProcess,
    admin_conn,
    free_port,
    pg_dsn,
)

# ``sync`` first: it is the default level, the one every workload must pass.
MODES = ("sync", "async")

# How a client talks to the proxy:
#   simple   - Query messages, parameters merged by the client (psycopg ClientCursor)
#   extended - Parse/Bind/Execute with the unnamed statement (psycopg, prepare=False)
#   prepared - named prepared statements, re-executed (psycopg, prepare=True)
# asyncpg (named statements, binary parameters) is driven separately, being async.
Protocol = Literal["simple", "extended", "prepared"]
PROTOCOLS: tuple[Protocol, ...] = ("simple", "extended", "prepared")

SEQUENCE_POLL_SECONDS = 10.0


@dataclass
class Stores:
    """Both stores and a proxy between them, shared by several tests."""

    pair: PgPair
    proxy: ProxyProcess
    mark: int = 0  # divergences reported before the current test began

    def begin_test(self) -> Stores:
        """Count only the next test's divergences, once the previous test's writes
        (even a failed test's) have drained."""
        self.proxy.wait_mirror_idle()
        self.mark = len(self.proxy.divergences())
        return self

    def new_divergences(self) -> list[dict[str, Any]]:
        return self.proxy.divergences()[self.mark :]


@contextmanager
def shared_stores(workdir: Path, mode: str) -> Iterator[Stores]:
    """Like the pg_pair and proxy_factory fixtures, for a whole module (a proxy and
    two databases per test would cost more than the statements under test)."""
    tag = uuid.uuid4().hex[:10]
    pair = PgPair(f"sp_old_{tag}", f"sp_new_{tag}")
    with admin_conn() as c:
        for db in (pair.old, pair.new):
            c.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(
        SHADOW_LISTEN=f"127.0.0.1:{port}",
        SHADOW_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        SHADOW_OLD_DSN=pg_dsn(pair.old),
        SHADOW_NEW_DSN=pg_dsn(pair.new),
        SHADOW_MODE="dual-write",
        SHADOW_MIRROR_CONSISTENCY=mode,
        SHADOW_JOURNAL_DIR=str(workdir / "journal"),
        SHADOW_DIVERGENCE_LOG=str(workdir / "divergence.jsonl"),
    )
    proxy = ProxyProcess(port, admin_port, env, workdir)
    try:
        try:
            proxy.start()
        except RuntimeError as exc:
            if "SHADOW_MIRROR_CONSISTENCY" in str(exc):
                pytest.fail(f"the proxy refuses SHADOW_MIRROR_CONSISTENCY={mode}: {exc}")
            raise
        yield Stores(pair, proxy)
    finally:
        proxy.stop()
        with admin_conn() as c:
            for db in (pair.old, pair.new):
                c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")  # type: ignore[arg-type]


class StoresPool:
    """Shared stores per consistency level for one test module, each started on first use.

    A test takes ``pool.stores(mode)``: the level's proxy and databases, marked so
    that only that test's divergences count.  Tests sharing a pool use tables of
    their own (or drop and recreate theirs directly on both stores).
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
        self._tmp, self._name = tmp_path_factory, name
        self._started: dict[str, Stores] = {}
        self._exit = ExitStack()

    def stores(self, mode: str) -> Stores:
        if mode not in self._started:
            workdir = self._tmp.mktemp(f"{self._name}-{mode}")
            self._started[mode] = self._exit.enter_context(shared_stores(workdir, mode))
        return self._started[mode].begin_test()

    def __enter__(self) -> StoresPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for started in self._started.values():  # all at once: each may wait for its drain
            proc = started.proxy.proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        self._exit.close()


def start_proxy(
    proxy_factory: Callable[..., ProxyProcess], pair: PgPair, mode: str, **extra: str
) -> ProxyProcess:
    """A dual-write proxy between the pair's databases at consistency level ``mode``."""
    try:
        return proxy_factory(pg_dsn(pair.old), pg_dsn(pair.new), mirror_consistency=mode, **extra)
    except RuntimeError as exc:
        if "SHADOW_MIRROR_CONSISTENCY" in str(exc):
            pytest.fail(f"the proxy refuses SHADOW_MIRROR_CONSISTENCY={mode}: {exc}")
        raise


# ------------------------------------------------------------------ clients


def psycopg_connect(
    proxy: ProxyProcess, db: str, protocol: Protocol, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """A psycopg connection through the proxy that speaks ``protocol``."""
    if protocol == "simple":
        return psycopg.connect(
            proxy.dsn(db), autocommit=autocommit, cursor_factory=psycopg.ClientCursor
        )
    conn = psycopg.connect(proxy.dsn(db), autocommit=autocommit)
    # prepare=None would switch to named statements after 5 runs: be explicit.
    conn.prepare_threshold = 0 if protocol == "prepared" else None
    return conn


def run(
    conn: psycopg.Connection[Any], protocol: Protocol, sql: str, params: Any = None
) -> psycopg.Cursor[Any]:
    """Execute one statement in the connection's protocol."""
    return conn.execute(sql, params, prepare=protocol == "prepared")  # type: ignore[arg-type]


async def asyncpg_connect(proxy: ProxyProcess, db: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=proxy.port, user=PG_USER, database=db)


# ------------------------------------------------------- comparing the stores


def user_tables(pair: PgPair, which: str) -> list[str]:
    with pair.connect(which) as c:
        rows = c.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


# The whole-row alias: a name no column of the tested tables has (PgPair.table_digest's
# "r" would mean a column named r, not the row, in a table that has one).
ROW = "whole_row_"


def whole_row_digest(pair: PgPair, which: str, table: str) -> tuple[int, str]:
    """(rows, md5 of every row's text in text order): every column, key or not."""
    with pair.connect(which) as c:
        row = c.execute(
            f"SELECT count(*), coalesce(md5(string_agg({ROW}::text, '|' ORDER BY {ROW}::text)), '')"  # noqa: S608
            f" FROM {table} AS {ROW}"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def row_texts(pair: PgPair, which: str, table: str) -> Counter[str]:
    with pair.connect(which) as c:
        rows = c.execute(f"SELECT {ROW}::text FROM {table} AS {ROW}").fetchall()  # noqa: S608
    return Counter(str(r[0]) for r in rows)


@dataclass
class TableDiff:
    table: str
    only_old: list[str]  # row texts (a sample)
    only_new: list[str]
    count_old: int
    count_new: int

    def __str__(self) -> str:
        return (
            f"{self.table}: {self.count_old} rows on old, {self.count_new} on new;"
            f" only on old {self.only_old[:5]}, only on new {self.only_new[:5]}"
        )


def diff_table(pair: PgPair, table: str) -> TableDiff | None:
    old, new = whole_row_digest(pair, "old", table), whole_row_digest(pair, "new", table)
    if old == new:
        return None
    rows_old, rows_new = row_texts(pair, "old", table), row_texts(pair, "new", table)
    return TableDiff(
        table,
        sorted((rows_old - rows_new).elements()),
        sorted((rows_new - rows_old).elements()),
        old[0],
        new[0],
    )


def store_differences(pair: PgPair, tables: list[str] | None = None) -> list[TableDiff]:
    """Every table of old that differs on new (a table missing on new differs)."""
    names = tables if tables is not None else user_tables(pair, "old")
    missing = set(names) - set(user_tables(pair, "new"))
    diffs = [TableDiff(t, ["<table missing on new>"], [], -1, -1) for t in sorted(missing)]
    return diffs + [d for t in names if t not in missing and (d := diff_table(pair, t))]


def assert_stores_identical(
    pair: PgPair, proxy: ProxyProcess | None = None, tables: list[str] | None = None
) -> list[str]:
    """Every table (default: all of old's, which new must also have) identical, every column."""
    names = tables if tables is not None else user_tables(pair, "old")
    assert names, "nothing to compare: no table on old"
    if tables is None:
        assert user_tables(pair, "new") == names, "the stores do not have the same tables"
    diffs = store_differences(pair, names)
    if diffs:
        shown = "\n".join(str(d) for d in diffs)
        raise AssertionError(f"stores differ:\n{shown}\n{divergence_summary(proxy)}")
    return names


def divergence_summary(proxy: ProxyProcess | None) -> str:
    """The divergences reported so far, counted by kind, with a few examples."""
    events = proxy.divergences() if proxy else []
    kinds = Counter(str(e.get("kind")) for e in events)
    examples = [
        {k: (str(v)[:160] if k == "fingerprint" else v) for k, v in e.items() if k != "ts"}
        for e in events[:3]
    ]
    return f"divergences reported: {dict(kinds)}; first ones: {examples}"


def settle(proxy: ProxyProcess, pair: PgPair, timeout: float = 60.0) -> list[str]:
    """Wait for the mirror to drain, then require identical stores."""
    proxy.wait_mirror_idle(timeout=timeout)
    return assert_stores_identical(pair, proxy)


# ---------------------------------------------------------------- sequences


def sequence_values(pair: PgPair, which: str) -> dict[str, int | None]:
    """last_value of every sequence (None: never used), by qualified name."""
    with pair.connect(which) as c:
        rows = c.execute(
            "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences"
        ).fetchall()
    return {str(name): (None if value is None else int(value)) for name, value in rows}


def sequences_behind(pair: PgPair) -> dict[str, tuple[int, int | None]]:
    """Sequences whose value on new is below old's: {name: (old, new)}."""
    old, new = sequence_values(pair, "old"), sequence_values(pair, "new")
    behind: dict[str, tuple[int, int | None]] = {}
    for name, value in old.items():
        if value is None:
            continue
        other = new.get(name)
        if other is None or other < value:
            behind[name] = (value, other)
    return behind


def assert_sequences_caught_up(pair: PgPair, timeout: float = SEQUENCE_POLL_SECONDS) -> None:
    """After a workload, no key the old store handed out can collide on new."""
    assert sequence_values(pair, "old"), "no sequence on old: nothing to check"
    deadline = time.monotonic() + timeout
    behind = sequences_behind(pair)
    while behind and time.monotonic() < deadline:
        time.sleep(0.2)
        behind = sequences_behind(pair)
    assert not behind, (
        f"sequences on new behind old after {timeout} s: {{name: (old, new)}} {behind}"
    )


# ---------------------------------------------------------- schema and tools


def columns_of(pair: PgPair, which: str, tables: str = "%") -> list[tuple[Any, ...]]:
    """Columns of the public tables whose name is LIKE ``tables``, as the catalog says."""
    with pair.connect(which) as c:
        return c.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default, is_identity, identity_generation"
            " FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name LIKE %s ORDER BY 1, 3",
            (tables,),
        ).fetchall()


def indexes_of(pair: PgPair, which: str, tables: str = "%") -> list[tuple[Any, ...]]:
    with pair.connect(which) as c:
        return c.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename LIKE %s ORDER BY 1, 2",
            (tables,),
        ).fetchall()


def assert_same_schema(pair: PgPair, tables: str = "%") -> None:
    assert columns_of(pair, "old", tables) == columns_of(pair, "new", tables)
    assert indexes_of(pair, "old", tables) == indexes_of(pair, "new", tables)


def shadowproxy_has(command: str) -> bool:
    """Whether the installed ``shadowproxy`` offers ``command`` (some are still to come)."""
    out = subprocess.run(
        [SHADOWPROXY, command, "--help"], capture_output=True, text=True, timeout=30
    )
    return out.returncode == 0


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` for i in 0..n-1 in threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a workload thread is stuck"
    if errors:
        raise errors[0]
