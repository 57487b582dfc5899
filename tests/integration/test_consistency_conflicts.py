"""Conflicting writers: non-commuting updates of a few hot rows from many connections.

``v + k``, ``v * k`` and ``greatest(v, k)`` do not commute, so the new store
ends with the old store's values only if it applied the updates of each row in
the old store's order.  The old store serializes them with row locks; in
``sync`` the mirror applies each write while the old store still holds those
locks, so the stores must end identical, with nothing to report.  In ``async``
the mirror may reorder writers of different sessions: any difference is
allowed there only if it was reported (divergence log, inline or by a compare),
never silently.

Eight connections: each of simple protocol, extended (unnamed), named prepared
statements and asyncpg, once in autocommit and once in explicit transactions
of several updates (taken in key order, so the old store never deadlocks).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import SHADOWPROXY, PgPair, ProxyProcess, pg_dsn
from tests.integration.consistency import (
    MODES,
    PROTOCOLS,
    StoresPool,
    asyncpg_connect,
    psycopg_connect,
    run,
    run_threads,
    shadowproxy_has,
    store_differences,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOT_ROWS = 4
CONNECTIONS = 8
DURATION = 2.5
MODULUS = 1_000_003  # keeps v a bigint forever, whatever the order
UPDATES_PER_TRANSACTION = 3

# Each update: (SQL with $1 = k, $2 = id), in psycopg's and asyncpg's placeholder styles.
OPERATIONS = (
    "UPDATE hot SET v = mod(v + {k}, 1000003), n = n + 1 WHERE id = {id}",
    "UPDATE hot SET v = mod(v * {k}, 1000003), n = n + 1 WHERE id = {id}",
    "UPDATE hot SET v = greatest(v, {k}), n = n + 1 WHERE id = {id}",
)
CLIENTS = (*PROTOCOLS, "asyncpg")


def updates(rng: random.Random, count: int) -> list[tuple[str, int, int]]:
    """``count`` random (operation, k, id), in key order (one lock order for everyone)."""
    chosen = [
        (rng.choice(OPERATIONS), rng.randint(2, MODULUS - 1), rng.randint(1, HOT_ROWS))
        for _ in range(count)
    ]
    return sorted(chosen, key=lambda u: u[2])


def psycopg_writer(
    proxy: ProxyProcess, db: str, client: Any, in_txn: bool, seed: int, deadline: float
) -> int:
    rng, done = random.Random(seed), 0
    with psycopg_connect(proxy, db, client, autocommit=not in_txn) as conn:
        while time.monotonic() < deadline:
            batch = updates(rng, UPDATES_PER_TRANSACTION if in_txn else 1)
            for op, k, key in batch:
                cur = run(conn, client, op.format(k="%s", id="%s"), (k, key))
                assert cur.rowcount == 1
            if in_txn:
                conn.commit()
            done += len(batch)
    return done


async def asyncpg_writer(
    proxy: ProxyProcess, db: str, in_txn: bool, seed: int, deadline: float
) -> int:
    rng, done = random.Random(seed), 0
    conn = await asyncpg_connect(proxy, db)
    try:
        while time.monotonic() < deadline:
            batch = updates(rng, UPDATES_PER_TRANSACTION if in_txn else 1)
            tx = conn.transaction()
            if in_txn:
                await tx.start()
            for op, k, key in batch:
                # $1::bigint: asyncpg would infer int4 from "v + $1" and k can exceed it.
                status = await conn.execute(op.format(k="$1::bigint", id="$2"), k, key)
                assert status == "UPDATE 1"
            if in_txn:
                await tx.commit()
            done += len(batch)
    finally:
        await conn.close()
    return done


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoresPool]:
    with StoresPool(tmp_path_factory, "conflicts") as p:
        yield p


def create_hot_rows(pair: PgPair, values: str) -> None:
    """The hot table, made afresh directly on both stores (tests share the databases)."""
    pair.run_both(
        "DROP TABLE IF EXISTS hot;"
        "CREATE TABLE hot (id int PRIMARY KEY, v bigint NOT NULL, n bigint NOT NULL);"
        f"INSERT INTO hot {values};"
    )


def run_conflicts(proxy: ProxyProcess, pair: PgPair) -> Counter[str]:
    create_hot_rows(pair, f"SELECT g, g * 7, 0 FROM generate_series(1, {HOT_ROWS}) g")
    deadline = time.monotonic() + DURATION
    done: Counter[str] = Counter()

    def writer(i: int) -> None:
        client, in_txn = CLIENTS[i % len(CLIENTS)], i >= len(CLIENTS)
        label = f"{client}/{'transaction' if in_txn else 'autocommit'}"
        if client == "asyncpg":
            done[label] += asyncio.run(asyncpg_writer(proxy, pair.old, in_txn, i, deadline))
        else:
            done[label] += psycopg_writer(proxy, pair.old, client, in_txn, i, deadline)

    run_threads(CONNECTIONS, writer)
    assert len(done) == CONNECTIONS and min(done.values()) > 0, done
    with pair.connect("old") as c:
        row = c.execute("SELECT sum(n) FROM hot").fetchone()
    assert row is not None and row[0] == sum(done.values())  # every update landed once
    return done


def test_sync_conflicting_writers_leave_identical_stores(pool: StoresPool) -> None:
    s = pool.stores("sync")
    done = run_conflicts(s.proxy, s.pair)
    s.proxy.wait_mirror_idle()
    diffs = store_differences(s.pair, ["hot"])
    assert not diffs, (
        f"stores differ after {dict(done)}: {[str(d) for d in diffs]}; {s.new_divergences()}"
    )
    assert s.new_divergences() == []


def run_compare(proxy: ProxyProcess, pair: PgPair) -> str:
    """``shadowproxy compare`` of the hot table, reporting into the proxy's divergence log."""
    if not shadowproxy_has("compare"):
        warnings.warn(
            "shadowproxy compare is not available: only inline reports are checked",
            stacklevel=2,
        )
        return "shadowproxy compare is not available"
    out = subprocess.run(
        [
            SHADOWPROXY,
            "compare",
            "--old",
            pg_dsn(pair.old),
            "--new",
            pg_dsn(pair.new),
            "--tables",
            "hot",
            "--settle-seconds",
            "1",  # the mirror is already idle: differences now are final
            "--divergence-log",
            str(proxy.divergence_log),
        ],
        cwd=proxy.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"compare exited {out.returncode}: {out.stdout[-1500:]} {out.stderr[-1500:]}"


def test_async_conflicting_writers_never_diverge_silently(pool: StoresPool) -> None:
    s = pool.stores("async")
    done = run_conflicts(s.proxy, s.pair)
    s.proxy.wait_mirror_idle()
    diffs = store_differences(s.pair, ["hot"])
    if not diffs:
        return  # identical: nothing to report
    if any("hot" in json.dumps(e) for e in s.new_divergences()):
        return  # reported inline by the proxy
    compared = run_compare(s.proxy, s.pair)
    reported = {
        tuple(e["key"])
        for e in s.new_divergences()
        if e.get("source") == "comparator" and "hot" in str(e.get("table")) and "key" in e
    }
    differing = differing_keys(s.pair)
    assert differing <= reported, (
        f"rows {sorted(differing - reported)} differ and were not reported (inline or by a"
        f" compare): {[str(d) for d in diffs]} after {dict(done)}; {compared}"
    )


def differing_keys(pair: PgPair) -> set[tuple[int, ...]]:
    rows = []
    for which in ("old", "new"):
        with pair.connect(which) as c:
            rows.append(dict(c.execute("SELECT id, (v, n) FROM hot").fetchall()))
    return {(k,) for k in rows[0].keys() | rows[1].keys() if rows[0].get(k) != rows[1].get(k)}


@pytest.mark.parametrize("mode", MODES)
def test_deadlock_victim_is_not_mirrored(pool: StoresPool, mode: str) -> None:
    """Two transactions lock two rows in opposite orders: the old store kills one
    (40P01) and commits the other; the new store must end with the survivor's work
    only, although in ``sync`` it had already applied part of the victim's."""
    s = pool.stores(mode)
    create_hot_rows(s.pair, "VALUES (1, 10, 0), (2, 20, 0)")
    both_hold_one = threading.Barrier(2, timeout=30)
    outcome: dict[int, str] = {}

    def transaction(i: int) -> None:
        first, second = (1, 2) if i == 0 else (2, 1)
        with psycopg_connect(s.proxy, s.pair.old, "extended", autocommit=False) as conn:
            run(conn, "extended", OPERATIONS[i].format(k="%s", id="%s"), (3, first))
            both_hold_one.wait()
            try:
                run(conn, "extended", OPERATIONS[i].format(k="%s", id="%s"), (5, second))
                conn.commit()
                outcome[i] = "committed"
            except psycopg.errors.DeadlockDetected:
                conn.rollback()
                outcome[i] = "victim"

    run_threads(2, transaction)
    assert sorted(outcome.values()) == ["committed", "victim"], outcome
    s.proxy.wait_mirror_idle()
    diffs = store_differences(s.pair, ["hot"])
    assert not diffs, f"{[str(d) for d in diffs]}; {s.new_divergences()}"
    assert s.new_divergences() == []
