"""Shadow reads: sampled autocommit reads re-run on the new store and compared.

The client always gets the old store's answer; a row changed on the new store
behind the proxy's back makes the next shadow read of it a ``read``
divergence, and the parity table shows both stores' latency per statement.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import PgPair, ProxyProcess, pg_dsn

pytestmark = pytest.mark.integration


def shadow_status(proxy: ProxyProcess, want: int, timeout: float = 15.0) -> dict[str, Any]:
    """/status's shadow_reads once ``want`` reads have an outcome."""
    deadline = time.monotonic() + timeout
    while True:
        sr: dict[str, Any] = proxy.status()["shadow_reads"]
        done = sum(n for k, n in sr["outcomes"].items() if k != "shed")
        if done >= want and sr["inflight"] == 0:
            return sr
        assert time.monotonic() < deadline, f"shadow reads did not finish: {sr}"
        time.sleep(0.05)


def test_shadow_reads_match_then_catch_a_row_changed_behind_the_proxy(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    pg_pair.run_both(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);"
        "INSERT INTO t SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 50) g"
    )
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="shadow-read", shadow_read_fraction="1"
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        # simple protocol, extended (prepared) protocol, unordered and ordered results
        assert conn.execute("SELECT count(*) FROM t", prepare=False).fetchone() == (50,)
        shadow_status(proxy, 1)
        rows = conn.execute("SELECT * FROM t WHERE id <= %s ORDER BY id", (10,), prepare=True)
        assert len(rows.fetchall()) == 10
        shadow_status(proxy, 2)
        conn.execute("SELECT v FROM t", prepare=False).fetchall()
        shadow_status(proxy, 3)

    async def with_asyncpg() -> None:
        c = await asyncpg.connect(proxy.dsn(pg_pair.old))
        try:
            assert len(await c.fetch("SELECT id, n FROM t WHERE id > $1", 40)) == 10
        finally:
            await c.close()

    asyncio.run(with_asyncpg())
    status = shadow_status(proxy, 4)
    assert status["outcomes"].get("match", 0) >= 4, status
    assert "mismatch" not in status["outcomes"], status
    assert proxy.divergences() == []
    assert status["parity"], "no latency recorded per statement"
    assert {"read_store_p99_ms", "shadow_store_p99_ms"} <= set(status["parity"][0])

    # Behind the proxy's back: the new store's row 7 changes.
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute("UPDATE t SET v = 'changed on new' WHERE id = 7")
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        got = conn.execute("SELECT v FROM t WHERE id = 7", prepare=False).fetchone()
        assert got == ("row 7",)  # the client gets the old store's answer
    status = shadow_status(proxy, 5)
    assert status["outcomes"].get("mismatch") == 1, status
    events = [e for e in proxy.divergences() if e["kind"] == "read"]
    assert len(events) == 1, proxy.divergences()
    assert "SELECT v FROM t WHERE id = $1" in events[0]["fingerprint"]


def test_a_shadow_connection_lost_mid_read_is_an_error_outcome_and_is_reopened(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_pair.run_both("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20) g")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="shadow-read", shadow_read_fraction="1"
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (20,)
        assert shadow_status(proxy, 1)["outcomes"] == {"match": 1}
        # A slow read: once the client has its answer, the same statement runs on
        # the new store, where its connection is terminated mid-read.
        got = conn.execute("SELECT v, pg_sleep(1) FROM t WHERE id = 2").fetchone()
        assert got is not None and got[0] == "row 2"
        killed = None
        deadline = time.monotonic() + 5
        with pg_pair.connect("new", autocommit=True) as admin:
            while not killed and time.monotonic() < deadline:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' "
                    "AND query LIKE 'SELECT v, pg_sleep(1)%'"
                ).fetchone()[0]
        assert killed == 1
        status = shadow_status(proxy, 2)
        assert status["outcomes"] == {"match": 1, "error": 1}, status
        # The client's session is unaffected; the next shadow read opens a new
        # connection and matches.
        assert conn.execute("SELECT v FROM t WHERE id = 4").fetchone() == ("row 4",)
        status = shadow_status(proxy, 3)
        assert status["outcomes"] == {"match": 2, "error": 1}, status
    assert proxy.divergences() == []


def test_a_statement_the_shadow_store_could_not_prepare_is_prepared_again(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    """A shadow connection prepares each sampled statement once; when that fails
    (here the table is missing on the new store) it must not keep binding to a
    statement that does not exist: once the table is there, the reads match."""
    with pg_pair.connect("old", autocommit=True) as c:
        c.execute("CREATE TABLE late (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO late SELECT g, 'row ' || g FROM generate_series(1, 5) g")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="shadow-read", shadow_read_fraction="1"
    )
    query = "SELECT v FROM late WHERE id = %s"
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        assert conn.execute(query, (1,), prepare=True).fetchone() == ("row 1",)
        status = shadow_status(proxy, 1)
        assert status["outcomes"] == {"mismatch": 1}, status
        [event] = proxy.divergences()
        assert event["kind"] == "read" and event["shadow_store"]["rows"] == 0, event
        with pg_pair.connect("new", autocommit=True) as c:
            c.execute("CREATE TABLE late (id int PRIMARY KEY, v text)")
            c.execute("INSERT INTO late SELECT g, 'row ' || g FROM generate_series(1, 5) g")
        for i in (2, 3, 4):  # the same statement, bound again: once prepared, reused
            assert conn.execute(query, (i,), prepare=True).fetchone() == (f"row {i}",)
            status = shadow_status(proxy, i)
        assert status["outcomes"] == {"mismatch": 1, "match": 3}, status
    assert len(proxy.divergences()) == 1


def test_sessions_with_the_same_settings_share_one_shadow_connection(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    """Four sessions, one shadow connection on the new store; a session with a
    setting of its own (its SET replayed there) gets a second one."""
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_pair.run_both("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20) g")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="shadow-read", shadow_read_fraction="1"
    )

    def shadow_backends() -> int:
        with pg_pair.connect("new", autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'SELECT v FROM t WHERE id = $1%'"
            ).fetchone()
            return int(row[0])

    conns = [psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) for _ in range(4)]
    try:
        for i, conn in enumerate(conns, start=1):
            got = conn.execute("SELECT v FROM t WHERE id = %s", (i,), prepare=True).fetchone()
            assert got == (f"row {i}",)
            shadow_status(proxy, i)
        assert shadow_backends() == 1
        conns[0].execute("SET TimeZone = 'Asia/Tokyo'")
        conns[0].execute("SELECT v FROM t WHERE id = %s", (9,), prepare=True).fetchone()
        status = shadow_status(proxy, 5)
        assert shadow_backends() == 2
        assert proxy.status()["shadow_reads"]["connections"] == 2
    finally:
        for conn in conns:
            conn.close()
    assert status["outcomes"] == {"match": 5}, status
    assert proxy.divergences() == []


def test_shadow_connections_are_bounded_by_the_reads_in_flight(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    """Sessions that each SET a value of their own do not open a connection per
    value: past SHADOW_SHADOW_READ_MAX_INFLIGHT links, the least recently used
    idle one is closed to make room."""
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_pair.run_both("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20) g")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old),
        pg_dsn(pg_pair.new),
        mode="shadow-read",
        shadow_read_fraction="1",
        shadow_read_max_inflight="2",
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        for i in range(1, 6):
            conn.execute(f"SET application_name = 'user {i}'")
            assert conn.execute("SELECT v FROM t WHERE id = %s", (i,)).fetchone() == (f"row {i}",)
            status = shadow_status(proxy, i)
    assert status["outcomes"] == {"match": 5}, status
    deadline = time.monotonic() + 5
    with pg_pair.connect("new", autocommit=True) as c:
        while True:
            names = [
                r[0]
                for r in c.execute(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'user %'"
                ).fetchall()
            ]
            if len(names) <= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert sorted(names) == ["user 4", "user 5"], names
