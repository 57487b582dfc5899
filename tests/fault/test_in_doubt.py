"""The authoritative connection breaks while a write is in flight: whether it
committed is unknown, so the session's open work is kept for repair (rejected
journal + divergence), not mirrored blindly and not dropped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from proxy.mirror.journal import Journal
from tests.conftest import PgPair, ProxyProcess, admin_conn


def test_write_in_flight_when_the_old_store_drops_the_session(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    conn = psycopg.connect(dual_proxy.dsn(pg_pair.old), application_name="in-doubt-client")
    conn.execute("INSERT INTO t VALUES (1)")
    failure: list[BaseException] = []

    def slow_write() -> None:
        try:
            conn.execute("UPDATE t SET n = n + 1 WHERE pg_sleep(30) IS NOT NULL")
        except psycopg.OperationalError as exc:
            failure.append(exc)

    worker = threading.Thread(target=slow_write)
    worker.start()
    time.sleep(0.5)
    with admin_conn() as c:
        killed = c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'in-doubt-client' AND datname = %s",
            (pg_pair.old,),
        ).fetchall()
    assert killed == [(True,)]
    worker.join(timeout=10)
    assert failure, "the client must see its connection end"
    conn.close()

    deadline = time.monotonic() + 10
    while dual_proxy.status().get("rejected_units", 0) < 1:
        assert time.monotonic() < deadline, dual_proxy.status()
        time.sleep(0.05)
    events = [e for e in dual_proxy.divergences() if e["kind"] == "unmirrorable"]
    assert len(events) == 1, events
    [event] = events
    assert "in flight" in str(event["reason"])
    assert "t" in event["tables"]  # type: ignore[operator]
    rejected = Journal.open_readonly(Path(dual_proxy.env["SHADOW_JOURNAL_DIR"]) / "rejected")
    try:
        pending = rejected.read_pending()
        assert len(pending) == 1, [[it.sql for it in u.items] for _, u in pending]
        [(_, unit)] = pending
    finally:
        rejected.close()
    assert [it.sql for it in unit.items] == [
        "BEGIN",
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET n = n + 1 WHERE pg_sleep(30) IS NOT NULL",
    ]
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT count(*) FROM t").fetchone() == (0,)


pytestmark = pytest.mark.fault
