"""asyncpg through the proxy: extended protocol, binary formats, COPY, notifications, cancel.

asyncpg uses the extended protocol with binary parameters and results for
everything, names its prepared statements itself, and cancels with a
CancelRequest on a new connection carrying the BackendKeyData it was given, which
is the proxy's key, not the server's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import time
import uuid

import asyncpg
import pytest

from tests.conftest import PG_HOST, PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences

pytestmark = pytest.mark.integration


async def connect(proxy: ProxyProcess, db: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=proxy.port, user="postgres", database=db)


async def test_prepared_executemany_cursor_copy(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(
        "CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n bigint DEFAULT 0);"
        "CREATE TABLE bulk (id int PRIMARY KEY, label text, score double precision);"
    )
    conn = await connect(dual_proxy, pg_pair.old)
    try:
        ins = await conn.prepare("INSERT INTO kv (k, v) VALUES ($1, $2)")
        for i in range(200):
            await ins.fetch(i, f"value {i}")
        upd = await conn.prepare("UPDATE kv SET n = n + $1 WHERE k % $2 = 0")
        for step in range(1, 11):
            status = await conn.execute("SELECT 1")  # a read between writes
            assert status == "SELECT 1"
            await upd.fetch(step, step + 1)
        assert await conn.fetchval("SELECT count(*) FROM kv") == 200

        await conn.executemany(
            "INSERT INTO bulk (id, label, score) VALUES ($1, $2, $3)",
            [(i, f"row {i}", i / 3) for i in range(2000)],
        )
        await conn.executemany("DELETE FROM bulk WHERE id = $1", [(i,) for i in range(0, 2000, 9)])

        async with conn.transaction():
            seen = 0
            async for r in conn.cursor(
                "SELECT id FROM bulk WHERE id % 5 = 0 ORDER BY id", prefetch=50
            ):
                if r["id"] % 10 == 0:
                    await conn.execute(
                        "UPDATE bulk SET label = label || ' (tens)' WHERE id = $1", r["id"]
                    )
                seen += 1
            assert seen > 300

        result = await conn.copy_records_to_table(
            "bulk",
            records=[(i, f"copied {i}", i * 0.5) for i in range(10_000, 13_000)],
            columns=["id", "label", "score"],
        )
        assert result == "COPY 3000"
        async with conn.transaction():
            await conn.copy_records_to_table(
                "bulk", records=[(i, None, None) for i in range(20_000, 20_100)]
            )
            await conn.execute("DELETE FROM bulk WHERE id >= 20050")
    finally:
        await conn.close()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("kv", order="k")[0] == 200
    assert pg_pair.assert_same("bulk", order="id")[0] == 2000 - 223 + 3000 + 50
    assert_no_divergences(dual_proxy)


async def test_listen_notify(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    listener = await connect(dual_proxy, pg_pair.old)
    sender = await connect(dual_proxy, pg_pair.old)
    got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        await listener.add_listener(
            "sp_events", lambda _c, _pid, ch, payload: got.put_nowait((ch, payload))
        )
        await sender.execute("NOTIFY sp_events, 'hello through the proxy'")
        await sender.execute("SELECT pg_notify('sp_events', $1)", "second")
        assert await asyncio.wait_for(got.get(), 5) == ("sp_events", "hello through the proxy")
        assert await asyncio.wait_for(got.get(), 5) == ("sp_events", "second")
        # The listening connection still answers queries normally afterwards.
        assert await listener.fetchval("SELECT 41 + 1") == 42
    finally:
        await listener.close()
        await sender.close()
    dual_proxy.wait_mirror_idle()


async def test_cancel_is_forwarded(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY)")
    conn = await connect(dual_proxy, pg_pair.old)
    other = await connect(dual_proxy, pg_pair.old)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0.5)
        # asyncpg waits for the server's answer to its cancel before returning
        # the connection to a usable state; the statement must really have stopped.
        assert await conn.fetchval("SELECT 1") == 1
        assert time.monotonic() - started < 3
        with pg_pair.connect("old", autocommit=True) as direct:
            running = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)'"
                " AND state = 'active'"
            ).fetchone()
        assert running == (0,)
        # Other sessions were not touched by the cancel.
        await other.execute("INSERT INTO t VALUES (1)")
        await conn.execute("INSERT INTO t VALUES (2)")
        # A cancel inside a transaction aborts the statement; the rollback is mirrored as nothing.
        tr = conn.transaction()
        await tr.start()
        await conn.execute("INSERT INTO t VALUES (3)")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0.3)
        await tr.rollback()
        await conn.execute("INSERT INTO t VALUES (4)")
    finally:
        await conn.close()
        await other.close()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("t", order="id")[0] == 3
    assert_no_divergences(dual_proxy)


async def test_failing_transaction_rolls_back_on_both(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn = await connect(dual_proxy, pg_pair.old)
    try:
        await conn.execute("INSERT INTO t VALUES (1, 'before')")
        with pytest.raises(RuntimeError, match="application error"):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (2, 'rolled back')")
                await conn.execute("UPDATE t SET v = 'changed' WHERE id = 1")
                raise RuntimeError("application error")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (3, 'rolled back too')")
                await conn.execute("INSERT INTO t VALUES (1, 'duplicate')")
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (4, 'kept')")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():  # a savepoint
                    await conn.execute("INSERT INTO t VALUES (5, 'savepoint rolled back')")
                    await conn.execute("INSERT INTO t VALUES (4, 'duplicate')")
            await conn.execute("INSERT INTO t VALUES (6, 'after the savepoint')")
    finally:
        await conn.close()
    dual_proxy.wait_mirror_idle()
    rows = pg_pair.assert_same("t", order="id")
    assert rows[0] == 3
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 4, 6],)
    assert_no_divergences(dual_proxy)


async def test_binary_parameters_of_many_types(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(
        """CREATE TABLE typed (
            id int PRIMARY KEY,
            big bigint,
            num numeric(30, 10),
            txt text,
            raw bytea,
            at timestamptz,
            day date,
            doc jsonb,
            uid uuid,
            ints int[],
            words text[],
            flag boolean,
            ratio double precision,
            span interval
        )"""
    )
    base = dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC)
    rows = [
        (
            i,
            2**40 + i * 7919,
            decimal.Decimal(f"{i}.{i:010d}") * (-1 if i % 2 else 1),
            f"text {i} ünïcødé ✓ 'quoted' \\ back",
            bytes(range(i % 256)) + b"\x00\xff",
            base + dt.timedelta(hours=i, microseconds=i),
            dt.date(2000, 1, 1) + dt.timedelta(days=i),
            json.dumps({"i": i, "nested": {"list": [i, None, True]}, "s": "x" * (i % 5)}),
            uuid.UUID(int=i * 0x1234567890ABCDEF),
            [i, -i, None, 2**31 - 1],
            [f"w{i}", "", None, 'comma,quote"brace{'],
            i % 3 == 0,
            i / 7,
            dt.timedelta(days=i, seconds=i),
        )
        for i in range(300)
    ]
    conn = await connect(dual_proxy, pg_pair.old)
    try:
        await conn.executemany(
            "INSERT INTO typed VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            rows,
        )
        await conn.execute(
            "UPDATE typed SET doc = doc || $1::jsonb, raw = raw || $2 WHERE uid = ANY($3::uuid[])",
            json.dumps({"updated": True}),
            b"\x01\x02",
            [r[8] for r in rows[::10]],
        )
        await conn.execute(
            "DELETE FROM typed WHERE at > $1 AND ints @> $2", base + dt.timedelta(hours=250), [260]
        )
        assert await conn.fetchval("SELECT count(*) FROM typed") == 299
    finally:
        await conn.close()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("typed", order="id")[0] == 299
    assert_no_divergences(dual_proxy)


async def test_write_through_a_cursor_fetched_in_parts(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    """A DML ... RETURNING portal read in parts (Execute with a row limit, then
    PortalSuspended) ran once: the mirror must apply it once, with its full count."""
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn = await connect(dual_proxy, pg_pair.old)
    try:
        async with conn.transaction():
            ids = [
                r["id"]
                async for r in conn.cursor(
                    "INSERT INTO t SELECT g, 'c' FROM generate_series(1, 450) g RETURNING id",
                    prefetch=100,
                )
            ]
            assert len(ids) == 450
            cur = await conn.cursor("UPDATE t SET v = 'u' WHERE id <= $1 RETURNING id", 300)
            assert len(await cur.fetch(120)) == 120
            assert len(await cur.fetch(500)) == 180
    finally:
        await conn.close()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("t", order="id")[0] == 450
    assert_no_divergences(dual_proxy)


async def test_session_settings_and_large_values(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    """server_settings travel in the startup packet; the mirror must apply them too."""
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, at timestamptz, day date, v text)")
    conn = await asyncpg.connect(
        host=PG_HOST,
        port=dual_proxy.port,
        user="postgres",
        database=pg_pair.old,
        server_settings={"timezone": "Asia/Tokyo", "datestyle": "SQL, DMY"},
    )
    try:
        await conn.execute("INSERT INTO t VALUES (1, '2024-01-01 10:00', '01/02/2024', 'x')")
        await conn.execute(
            "INSERT INTO t VALUES ($1, '2024-03-04 05:06', NULL, $2)", 2, "y" * 3_000_000
        )
        await conn.executemany(
            "INSERT INTO t (id, v) VALUES ($1, $2)",
            [(i, chr(0x400 + i) * 100_000) for i in range(3, 40)],
        )
    finally:
        await conn.close()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("t", order="id")[0] == 39
    assert_no_divergences(dual_proxy)
