"""read-new: autocommit reads are served by the new store, everything else by the old.

A marker row planted on the new store only (behind the proxy's back) shows on
the databases themselves which store answered: an autocommit read sees it, a
read inside a transaction does not.  Read-your-writes: a session that inserts
and at once reads (autocommit) always sees its row on the new store, in both
consistency levels.  Routed reads work in the simple and the extended
protocol (psycopg prepared statements, asyncpg), errors come back as the
store's own ErrorResponse, and the session goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import PgPair, ProxyProcess, pg_dsn
from tests.integration.test_shadow_reads import shadow_status

pytestmark = pytest.mark.integration

MARKER = 1_000_000


def fallbacks(proxy: ProxyProcess) -> list[str]:
    """The proxy's own account of reads it could not route (for failure messages)."""
    lines = proxy.http("/metrics")[1].decode().splitlines()
    return [x for x in lines if x.startswith("shadowproxy_read_route_fallbacks_total{")]


def _setup(pg_pair: PgPair) -> None:
    pg_pair.run_both(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20) g"
    )
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute(f"INSERT INTO t VALUES ({MARKER}, 'on new only')")


@pytest.mark.parametrize("consistency", ["sync", "async"])
def test_reads_go_to_new_and_see_the_sessions_own_writes(
    pg_pair: PgPair, proxy_factory: Any, consistency: str
) -> None:
    _setup(pg_pair)
    proxy = proxy_factory(
        pg_dsn(pg_pair.old),
        pg_dsn(pg_pair.new),
        mode="read-new",
        mirror_consistency=consistency,
        shadow_read_fraction="0",
    )
    marker_read = "SELECT count(*) FROM t WHERE id = %s"
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        # Served by new: the marker is there (simple, then extended with a named statement).
        assert conn.execute(f"SELECT count(*) FROM t WHERE id = {MARKER}").fetchone() == (1,)
        for _ in range(3):
            assert conn.execute(marker_read, (MARKER,), prepare=True).fetchone() == (1,)
        # Inside a transaction: the authoritative (old) store, no marker.
        with conn.transaction():
            assert conn.execute(marker_read, (MARKER,)).fetchone() == (0,)
        # Read-your-writes: each row read back at once, from the new store (with the marker).
        for i in range(100, 300):
            conn.execute("INSERT INTO t VALUES (%s, %s)", (i, f"w{i}"), prepare=i % 2 == 0)
            got = conn.execute(
                "SELECT id FROM t WHERE id IN (%s, %s) ORDER BY id", (i, MARKER), prepare=i % 3 == 0
            ).fetchall()
            assert got == [(i,), (MARKER,)], (
                f"row {i} not read back from the new store: {fallbacks(proxy)}"
            )
        # An error from the read store is the client's error; the session goes on.
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table", prepare=False)
        assert conn.execute("SELECT v FROM t WHERE id = 299").fetchone() == ("w299",)

    async def with_asyncpg() -> None:
        c = await asyncpg.connect(proxy.dsn(pg_pair.old))
        try:
            for i in range(300, 340):
                await c.execute("INSERT INTO t VALUES ($1, $2)", i, f"a{i}")
                rows = await c.fetch(
                    "SELECT id FROM t WHERE id = ANY($1::int[]) ORDER BY id", [i, MARKER]
                )
                assert [r["id"] for r in rows] == [i, MARKER]
            async with c.transaction():
                assert await c.fetchval("SELECT count(*) FROM t WHERE id = $1", MARKER) == 0
        finally:
            await c.close()

    asyncio.run(with_asyncpg())
    proxy.wait_mirror_idle()
    # Both stores hold the same rows, apart from the marker planted on new.
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute(f"DELETE FROM t WHERE id = {MARKER}")
    pg_pair.assert_same("t")
    assert proxy.divergences() == []
    metrics = proxy.http("/metrics")[1].decode()
    assert 'shadowproxy_statements_total{kind="read",store="new"}' in metrics


def test_read_store_down_reads_fall_back_to_old(pg_pair: PgPair, proxy_factory: Any) -> None:
    """The new store refuses the proxy: reads are served by the old store, never failed."""
    _setup(pg_pair)
    proxy = proxy_factory(
        pg_dsn(pg_pair.old),
        pg_dsn(pg_pair.new, user="no_such_role"),
        mode="read-new",
        mirror_consistency="async",
        shadow_read_fraction="0",
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        for _ in range(3):
            assert conn.execute(f"SELECT count(*) FROM t WHERE id = {MARKER}").fetchone() == (0,)
    metrics = proxy.http("/metrics")[1].decode()
    assert 'shadowproxy_read_route_fallbacks_total{reason="unavailable"}' in metrics


def test_shadow_reads_on_old_catch_a_row_changed_behind_the_proxy(
    pg_pair: PgPair, proxy_factory: Any
) -> None:
    """read-new serves reads from new and shadows them on old (the other store)."""
    pg_pair.run_both(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20) g"
    )
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="read-new", shadow_read_fraction="1"
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM t", prepare=False).fetchone() == (20,)
        shadow_status(proxy, 1)
        got = conn.execute("SELECT v FROM t WHERE id = %s", (3,), prepare=True).fetchone()
        assert got == ("row 3",)
        status = shadow_status(proxy, 2)
        assert status["outcomes"] == {"match": 2}, status
        assert status["parity"][0]["read_store"] == "new", status["parity"]

        with pg_pair.connect("old", autocommit=True) as c:
            c.execute("UPDATE t SET v = 'changed on old' WHERE id = 3")
        got = conn.execute("SELECT v FROM t WHERE id = %s", (3,), prepare=True).fetchone()
        assert got == ("row 3",)  # the new store's answer
        status = shadow_status(proxy, 3)
    assert status["outcomes"].get("mismatch") == 1, status
    events = [e for e in proxy.divergences() if e["kind"] == "read"]
    assert len(events) == 1 and "WHERE id = $1" in events[0]["fingerprint"], events
