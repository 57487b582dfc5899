"""The mirror's sequence sync keeps one connection to each store.

It runs every ``SHADOW_SEQUENCE_SYNC_INTERVAL`` seconds on every proxy
instance: opening connections each time would start server processes on the
production store at that rate.  The stores' own session counters tell.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import PgPair, pg_dsn

pytestmark = pytest.mark.integration


def sessions_started(pg_pair: PgPair, which: str, db: str) -> int:
    with pg_pair.connect(which, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        row = c.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sequence_sync_reuses_its_connections_and_keeps_sequences_in_step(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    pg_pair.run_both("CREATE TABLE t (id serial PRIMARY KEY, v int)")
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), sequence_sync_interval="0.1")
    with pg_pair.connect("old", autocommit=True) as c:
        c.execute("SELECT setval('t_id_seq', 500)")  # behind the proxy's back
    time.sleep(1.0)  # the first runs open their connections
    old_before = sessions_started(pg_pair, "old", pg_pair.old)
    new_before = sessions_started(pg_pair, "new", pg_pair.new)
    time.sleep(2.5)  # about 25 runs
    # Each count includes this test's own connection for the reading (one each).
    assert sessions_started(pg_pair, "old", pg_pair.old) - old_before <= 2
    assert sessions_started(pg_pair, "new", pg_pair.new) - new_before <= 2
    with pg_pair.connect("new", autocommit=True) as c:
        row = c.execute("SELECT last_value FROM t_id_seq").fetchone()
    assert row is not None and row[0] >= 500
    status = proxy.status()
    assert status["sequences_error"] == "" and status["sequences_synced_at"] > 0, status
