"""A stuck mirror (a lock held on the new store) never loses a unit: at
shutdown every queued unit, the one being applied included, is in the journal
and replays later; an apply past its timeout is cancelled on the store and
replayed once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.journal import Journal
from proxy.mirror.manager import MirrorConfig, MirrorManager
from proxy.mirror.replay import replay_pending
from proxy.mirror.unit import Item, ItemKind, Unit
from tests.conftest import PG_HOST, PG_PORT, PG_USER, PgPair

UNITS = 5


def insert_unit(n: int) -> Unit:
    item = Item(ItemKind.QUERY, f"INSERT INTO t VALUES ({n})", tags=["INSERT 0 1"])
    return Unit(1, n, False, (), [item], time.time())


def mirror_config(database: str, tmp_path: Path, apply_timeout: float) -> MirrorConfig:
    return MirrorConfig(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=None,
        database=database,
        connect_timeout=5,
        apply_timeout=apply_timeout,
        queue_max_units=100,
        queue_max_bytes=1 << 20,
        journal_dir=tmp_path / "journal",
    )


async def test_stop_journals_queued_and_in_flight_units(pg_pair: PgPair, tmp_path: Path) -> None:
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    config = mirror_config(pg_pair.new, tmp_path, apply_timeout=60)
    divergences = DivergenceLog(tmp_path / "divergences.jsonl")
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_pair.new) as lock:
        lock.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # the mirror's first apply blocks
        manager = MirrorManager(config, divergences)
        manager.start()
        session = manager.open_session(1, {})
        for n in range(1, UNITS + 1):
            session.submit(insert_unit(n))
        deadline = time.monotonic() + 10
        while manager.inflight == 0:
            assert time.monotonic() < deadline, "the mirror never started applying"
            await asyncio.sleep(0.02)
        await manager.stop(timeout=0.5)
        lock.rollback()

    journal = Journal(config.journal_dir)
    try:
        pending = [unit.seq for _, unit in journal.read_pending()]
        assert pending == list(range(1, UNITS + 1))  # commit order, nothing lost

        def connect(params: dict[str, str]) -> MirrorConnection:
            return MirrorConnection(PG_HOST, PG_PORT, PG_USER, None, pg_pair.new, params)

        assert await replay_pending(journal, connect, divergences, lambda u: None, 30) == UNITS
    finally:
        journal.close()
        divergences.close()
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT array_agg(n ORDER BY n) FROM t").fetchone() == (
            list(range(1, UNITS + 1)),
        )


async def test_an_apply_past_its_timeout_goes_to_the_journal_and_replays(
    pg_pair: PgPair, tmp_path: Path
) -> None:
    """A mirror store that does not answer (a lock held there) fails the apply
    after SHADOW_MIRROR_APPLY_TIMEOUT: the statement is cancelled on the store,
    the manager switches to the journal, and once the lock is gone the replayer
    applies every unit once, in order."""
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    config = mirror_config(pg_pair.new, tmp_path, apply_timeout=0.5)
    divergences = DivergenceLog(tmp_path / "divergences.jsonl")
    manager = MirrorManager(config, divergences)
    try:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_pair.new) as lock:
            lock.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            manager.start()
            session = manager.open_session(1, {})
            started = time.monotonic()
            for n in range(1, UNITS + 1):
                session.submit(insert_unit(n))
            while not manager.journaling:
                assert time.monotonic() - started < 10, "the apply never timed out"
                await asyncio.sleep(0.02)
            assert manager.journal_reason == "lost"  # the apply failed: connection dropped
            assert time.monotonic() - started >= 0.5
            lock.rollback()
        deadline = time.monotonic() + 20
        while not manager.drained():
            assert time.monotonic() < deadline, manager.status()
            await asyncio.sleep(0.05)
    finally:
        await manager.stop(timeout=2)
        divergences.close()
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT array_agg(n ORDER BY n) FROM t").fetchone() == (
            list(range(1, UNITS + 1)),
        )
    # Cancelled on the store when it timed out, the first apply did not commit
    # behind the journal's back: the replay applied every unit once.
    assert (tmp_path / "divergences.jsonl").read_text() == ""


async def _blocked_apply(
    pg_pair: PgPair, lock: psycopg.Connection, connect_timeout: float
) -> tuple[MirrorConnection, asyncio.Task[list]]:
    """A unit blocked on the store by ``lock``, on a connection whose cancels do
    not take (a wrong backend key: the store ignores them, as it does a cancel
    that arrives late)."""
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    lock.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    conn = MirrorConnection(PG_HOST, PG_PORT, PG_USER, None, pg_pair.new, timeout=connect_timeout)
    await conn.connect()
    assert conn.backend_key is not None
    conn.backend_key = (conn.backend_key[0], b"\0\0\0\0")
    return conn, asyncio.ensure_future(conn.apply(insert_unit(1), 0.3))


async def test_an_apply_that_commits_after_its_timeout_counts_as_applied(pg_pair: PgPair) -> None:
    """Past its deadline the unit is cancelled, but a cancel is asynchronous: the
    connection waits for the store's answer.  The store committed (the cancel did
    not take), so the unit is applied, not failed: failed, it would be journaled
    and replay would insert the row twice."""
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_pair.new) as lock:
        conn, apply = await _blocked_apply(pg_pair, lock, connect_timeout=5)
        try:
            await asyncio.sleep(0.8)  # past the 0.3 s deadline, the cancel sent
            assert not apply.done()
            lock.rollback()
            results = await asyncio.wait_for(apply, 5)
        finally:
            conn.close()
    assert [r.tags for r in results] == [["INSERT 0 1"]]
    assert [r.error for r in results] == [None]
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT array_agg(n) FROM t").fetchone() == ([1],)


async def test_an_apply_answered_neither_before_nor_after_its_cancel_fails_in_doubt(
    pg_pair: PgPair, caplog
) -> None:
    """The store answers neither the unit nor its cancel: after the apply timeout
    and the connect timeout the apply fails (the unit goes to the journal) and the
    log says the unit is in doubt."""
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_pair.new) as lock:
        conn, apply = await _blocked_apply(pg_pair, lock, connect_timeout=0.5)
        started = time.monotonic()
        try:
            with pytest.raises(MirrorUnavailable, match=r"did not answer within 0\.3s"):
                await asyncio.wait_for(apply, 5)
            assert time.monotonic() - started >= 0.75  # the apply timeout, then the grace
            assert not conn.connected
        finally:
            conn.close()
            lock.rollback()
    assert "in doubt" in caplog.text
