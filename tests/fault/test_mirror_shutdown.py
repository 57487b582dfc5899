"""Shutdown never drops what the mirror has not applied: with the mirror stuck
(a lock held on the new store), every queued unit, the one being applied
included, is in the journal when the manager stops, and replays later."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg

from proxy.mirror.connection import MirrorConnection
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


async def test_stop_journals_queued_and_in_flight_units(pg_pair: PgPair, tmp_path: Path) -> None:
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    config = MirrorConfig(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=None,
        database=pg_pair.new,
        connect_timeout=5,
        apply_timeout=60,
        queue_max_units=100,
        queue_max_bytes=1 << 20,
        journal_dir=tmp_path / "journal",
    )
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
