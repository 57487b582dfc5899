"""Statement shapes that must mirror exactly: each one, then the stores compared.

Upserts, joins in UPDATE and DELETE, writable CTEs, RETURNING, TRUNCATE,
COPY FROM STDIN, savepoints rolled back in part, prepared statements re-run
with new parameters, and DDL (mirrored: the proxy's policy for DDL).  Each
test writes through the proxy, waits for the mirror, compares its own tables
on both databases (every column) and expects no divergence.  The tests of one
consistency level share one proxy and one pair of databases, each test with
tables of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.consistency import (
    MODES,
    PROTOCOLS,
    Protocol,
    Stores,
    StoresPool,
    assert_same_schema,
    assert_stores_identical,
    asyncpg_connect,
    psycopg_connect,
    run,
    store_differences,
    user_tables,
)

pytestmark = pytest.mark.integration


# Every shape at both levels; all tests of a level share its proxy and databases.
both_levels = pytest.mark.parametrize("mode", MODES)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoresPool]:
    with StoresPool(tmp_path_factory, "shapes") as p:
        yield p


@pytest.fixture
def checked(pool: StoresPool, mode: str) -> Stores:
    """The level's shared stores, marked so that only this test's divergences count."""
    return pool.stores(mode)


def settle(s: Stores, *tables: str) -> None:
    """The mirror drained, the tables identical, and nothing reported by this test."""
    s.proxy.wait_mirror_idle()
    assert_stores_identical(s.pair, s.proxy, list(tables))
    assert s.new_divergences() == [], f"divergences: {s.new_divergences()}"


def connect(
    s: Stores, protocol: Protocol = "extended", autocommit: bool = True
) -> psycopg.Connection[Any]:
    return psycopg_connect(s.proxy, s.pair.old, protocol, autocommit=autocommit)


# ------------------------------------------------------------------- upserts


@both_levels
@pytest.mark.parametrize("action", ["update", "nothing"])
def test_insert_on_conflict(checked: Stores, action: str) -> None:
    table = f"upsert_{action}"
    checked.pair.run_both(
        f"CREATE TABLE {table} (k int PRIMARY KEY, v int NOT NULL, hits int NOT NULL DEFAULT 1);"
        f"INSERT INTO {table} (k, v) SELECT g, g FROM generate_series(1, 5) g;"
    )
    resolution = (
        f"DO UPDATE SET v = {table}.v + EXCLUDED.v, hits = {table}.hits + 1 WHERE {table}.v < 40"
        if action == "update"
        else "DO NOTHING"
    )
    sql = f"INSERT INTO {table} (k, v) VALUES (%s, %s), (%s, %s) ON CONFLICT (k) {resolution}"
    for protocol in PROTOCOLS:
        with connect(checked, protocol, autocommit=protocol != "prepared") as conn:
            for k in range(1, 9):
                run(conn, protocol, sql, (k, k * 3, k + 4, k))
            conn.commit()
    settle(checked, table)


# ------------------------------------------------------------ joins in DML


@both_levels
def test_update_from(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE uf_item (id int PRIMARY KEY, category int NOT NULL, price numeric NOT NULL);"
        "CREATE TABLE uf_rate (category int PRIMARY KEY, factor numeric NOT NULL);"
        "INSERT INTO uf_item SELECT g, g % 5, g * 1.5 FROM generate_series(1, 50) g;"
        "INSERT INTO uf_rate SELECT g, 1 + g / 10.0 FROM generate_series(0, 4) g;"
    )
    with connect(checked) as conn:
        cur = conn.execute(
            "UPDATE uf_item i SET price = round(i.price * r.factor, 2) FROM uf_rate r"
            " WHERE r.category = i.category AND r.factor > %s",
            (1.15,),
        )
        assert cur.rowcount == 30
        conn.execute(
            "UPDATE uf_rate r SET factor = r.factor + 1 FROM uf_item i WHERE i.id = r.category"
        )
    settle(checked, "uf_item", "uf_rate")


@both_levels
def test_delete_using(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE du_item (id int PRIMARY KEY, category int NOT NULL);"
        "CREATE TABLE du_banned (category int PRIMARY KEY);"
        "INSERT INTO du_item SELECT g, g % 7 FROM generate_series(1, 70) g;"
        "INSERT INTO du_banned VALUES (2), (5);"
    )
    with connect(checked, "simple") as conn:
        cur = conn.execute("DELETE FROM du_item i USING du_banned b WHERE i.category = b.category")
        assert cur.rowcount == 20
    settle(checked, "du_item", "du_banned")


@both_levels
def test_writable_cte(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE cte_live (id int PRIMARY KEY, payload text NOT NULL, n int NOT NULL);"
        "CREATE TABLE cte_archive (LIKE cte_live);"
        "INSERT INTO cte_live SELECT g, 'row ' || g, 0 FROM generate_series(1, 100) g;"
    )
    with connect(checked) as conn:
        cur = conn.execute(
            "WITH moved AS (DELETE FROM cte_live WHERE id <= %s RETURNING *)"
            " INSERT INTO cte_archive SELECT * FROM moved",
            (30,),
        )
        assert cur.rowcount == 30
        conn.execute(
            "WITH bumped AS (UPDATE cte_live SET n = n + 1 WHERE id % 4 = 0 RETURNING id, n)"
            " UPDATE cte_archive a SET n = b.n FROM bumped b WHERE a.id = b.id - 40"
        )
    settle(checked, "cte_live", "cte_archive")


# ----------------------------------------------------------------- RETURNING


@both_levels
def test_returning_gives_the_authoritative_rows(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE ret_item (id serial PRIMARY KEY, label text NOT NULL, n int NOT NULL DEFAULT 0)"
    )
    seen: list[tuple[Any, ...]] = []
    with connect(checked) as conn:
        seen += conn.execute(
            "INSERT INTO ret_item (label) SELECT 'p' || g FROM generate_series(1, 5) g RETURNING *"
        ).fetchall()
        seen += conn.execute("UPDATE ret_item SET n = n + 10 WHERE id <= 2 RETURNING *").fetchall()
        gone = conn.execute("DELETE FROM ret_item WHERE id = 5 RETURNING *").fetchall()

    async def with_asyncpg() -> list[tuple[Any, ...]]:
        conn = await asyncpg_connect(checked.proxy, checked.pair.old)
        try:
            rows = [
                tuple(r)
                for r in await conn.fetch(
                    "INSERT INTO ret_item (label) VALUES ('a1'), ('a2') RETURNING *"
                )
            ]
            # fetchrow: the portal is executed with a row limit (1), as applications do.
            one = await conn.fetchrow("INSERT INTO ret_item (label) VALUES ($1) RETURNING *", "a3")
            assert one is not None
            return [*rows, tuple(one)]
        finally:
            await conn.close()

    seen += asyncio.run(with_asyncpg())
    with checked.pair.connect("old") as c:
        held = {r[0]: r for r in c.execute("SELECT * FROM ret_item").fetchall()}
    latest = {r[0]: r for r in seen}  # the last answer about each row is what old holds
    assert gone == [(5, "p5", 0)] and latest.pop(5) == gone[0] and 5 not in held
    assert len(latest) == 7 and latest == {k: v for k, v in held.items() if k in latest}
    settle(checked, "ret_item")


# --------------------------------------------------------- TRUNCATE and COPY


@both_levels
def test_truncate(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE tr_parent (id serial PRIMARY KEY, label text);"
        "CREATE TABLE tr_child (id int PRIMARY KEY, parent int REFERENCES tr_parent);"
        "CREATE TABLE tr_kept (id int PRIMARY KEY);"
    )
    with connect(checked, "simple") as conn:
        conn.execute("INSERT INTO tr_parent (label) SELECT 'x' || g FROM generate_series(1, 20) g")
        conn.execute("INSERT INTO tr_child SELECT g, g FROM generate_series(1, 20) g")
        conn.execute("INSERT INTO tr_kept SELECT g FROM generate_series(1, 5) g")
        with conn.transaction():  # rolled back: nothing to mirror
            conn.execute("TRUNCATE tr_kept")
            raise psycopg.Rollback()
        conn.execute("TRUNCATE tr_parent, tr_child RESTART IDENTITY")
        conn.execute("INSERT INTO tr_parent (label) VALUES ('after')")  # id 1 again
        conn.execute("TRUNCATE tr_parent CASCADE")
        conn.execute("INSERT INTO tr_parent (label) VALUES ('last')")
    with checked.pair.connect("old") as c:
        assert c.execute("SELECT count(*) FROM tr_kept").fetchone() == (5,)
    settle(checked, "tr_parent", "tr_child", "tr_kept")


@both_levels
@pytest.mark.parametrize("in_txn", [False, True], ids=["autocommit", "transaction"])
def test_copy_from_stdin(checked: Stores, in_txn: bool) -> None:
    table = f"copy_{'txn' if in_txn else 'auto'}"
    checked.pair.run_both(
        f"CREATE TABLE {table} (id int PRIMARY KEY, label text, score float8, seen date)"
    )
    with connect(checked, autocommit=not in_txn) as conn:
        with conn.cursor().copy(f"COPY {table} (id, label, score, seen) FROM STDIN") as copy:
            for i in range(1, 1001):
                copy.write_row(
                    (i, f"label\t{i}\n" if i % 10 else None, i / 7, f"2026-01-{i % 28 + 1:02d}")
                )
        with conn.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write('2001,"quoted, comma",1.5,2026-02-01\n2002,,,\n')
        if in_txn:
            conn.execute(f"DELETE FROM {table} WHERE id % 3 = 0")
            conn.commit()
    settle(checked, table)


# ---------------------------------------------------------------- savepoints


@both_levels
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_savepoints_partial_rollback(checked: Stores, protocol: Protocol) -> None:
    table = f"sp_{protocol}"
    checked.pair.run_both(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL)")
    with connect(checked, protocol, autocommit=False) as conn:
        run(conn, protocol, f"INSERT INTO {table} VALUES (1, 'kept')")
        run(conn, protocol, "SAVEPOINT a")
        run(conn, protocol, f"INSERT INTO {table} VALUES (2, 'rolled back')")
        run(conn, protocol, "ROLLBACK TO SAVEPOINT a")
        run(conn, protocol, f"INSERT INTO {table} VALUES (3, 'after rollback to a')")
        run(conn, protocol, "SAVEPOINT b")
        run(conn, protocol, f"UPDATE {table} SET v = v || ' +b' WHERE id = 1")
        run(conn, protocol, "RELEASE SAVEPOINT b")
        run(conn, protocol, "SAVEPOINT c")
        with pytest.raises(psycopg.errors.UniqueViolation):  # get-or-create, the usual way
            run(conn, protocol, f"INSERT INTO {table} VALUES (3, 'duplicate')")
        run(conn, protocol, "ROLLBACK TO SAVEPOINT c")
        run(conn, protocol, f"UPDATE {table} SET v = v || ' +c' WHERE id = 3")
        with conn.transaction():  # psycopg's nested block: a savepoint of its own
            run(conn, protocol, f"INSERT INTO {table} VALUES (4, 'nested')")
            with conn.transaction():
                run(conn, protocol, f"DELETE FROM {table} WHERE id = 1")
                raise psycopg.Rollback()
        conn.commit()
    with checked.pair.connect("old") as c:
        assert c.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall() == [  # noqa: S608
            (1, "kept +b"),
            (3, "after rollback to a +c"),
            (4, "nested"),
        ]
    settle(checked, table)


# -------------------------------------------------------- prepared statements


@both_levels
def test_prepared_statements_reexecuted(checked: Stores) -> None:
    checked.pair.run_both(
        "CREATE TABLE prep_item (id int PRIMARY KEY, label text, n bigint NOT NULL)"
    )
    with connect(checked, "prepared") as conn:
        conn.cursor().executemany(
            "INSERT INTO prep_item (id, label, n) VALUES (%s, %s, %s)",
            [(i, f"item {i}", i) for i in range(1, 201)],
        )
        for step in range(1, 8):
            run(
                conn,
                "prepared",
                "UPDATE prep_item SET n = n * %s WHERE mod(id, %s) = 0",
                (step + 1, step),
            )

    with connect(checked, "simple") as conn:  # SQL-level PREPARE / EXECUTE
        conn.execute("PREPARE bump (int, int) AS UPDATE prep_item SET n = n + $1 WHERE id = $2")
        for i in range(1, 30):
            conn.execute(f"EXECUTE bump({i * 11}, {i})")
        conn.execute("DEALLOCATE bump")

    async def with_asyncpg() -> None:
        conn = await asyncpg_connect(checked.proxy, checked.pair.old)
        try:
            stmt = await conn.prepare("UPDATE prep_item SET label = $1 WHERE id = $2")
            for i in range(1, 50):
                await stmt.fetch(f"asyncpg {i}", i * 3)
            ins = await conn.prepare("INSERT INTO prep_item (id, label, n) VALUES ($1, $2, $3)")
            await ins.executemany([(1000 + i, None, -i) for i in range(100)])
        finally:
            await conn.close()

    asyncio.run(with_asyncpg())
    settle(checked, "prep_item")


# ---------------------------------------------------------------------- DDL


@both_levels
def test_ddl_is_mirrored(checked: Stores) -> None:
    with connect(checked, "simple") as conn:
        conn.execute("CREATE TABLE ddl_item (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO ddl_item SELECT g, 'n' || g FROM generate_series(1, 10) g")
        conn.execute("ALTER TABLE ddl_item ADD COLUMN score int NOT NULL DEFAULT 7")
        conn.execute("ALTER TABLE ddl_item ADD COLUMN note text")
        conn.execute("CREATE INDEX ddl_item_name ON ddl_item (name)")
        conn.execute(
            "CREATE UNIQUE INDEX ddl_item_score_id ON ddl_item (score, id) WHERE score > 0"
        )
        conn.execute("CREATE TABLE ddl_gone (id int)")
        conn.execute("INSERT INTO ddl_gone VALUES (1)")
        conn.execute("DROP TABLE ddl_gone")
    with connect(checked, "extended", autocommit=False) as conn:  # transactional DDL
        conn.execute("CREATE TABLE ddl_tx (id int PRIMARY KEY, item int REFERENCES ddl_item)")
        conn.execute("INSERT INTO ddl_tx VALUES (1, 1), (2, 2)")
        conn.commit()
        conn.execute("CREATE TABLE ddl_rolled_back (id int)")
        conn.rollback()
    checked.proxy.wait_mirror_idle()
    assert_same_schema(checked.pair, "ddl%")
    ddl_tables = [t for t in user_tables(checked.pair, "new") if t.startswith("ddl")]
    assert ddl_tables == ["ddl_item", "ddl_tx"]
    settle(checked, "ddl_item", "ddl_tx")


@both_levels
def test_ddl_volatile_default_on_existing_rows_is_never_silent(checked: Stores) -> None:
    """ADD COLUMN with a volatile default fills the existing rows with values each store
    computes itself: the new store must end with the same values, or the proxy must say
    that it could not give them (a divergence naming the table)."""
    checked.pair.run_both(
        "CREATE TABLE ddl_stamped (id int PRIMARY KEY);"
        "INSERT INTO ddl_stamped SELECT generate_series(1, 20);"
    )
    with connect(checked, "simple") as conn:
        conn.execute("ALTER TABLE ddl_stamped ADD COLUMN added timestamptz DEFAULT now()")
        conn.execute("ALTER TABLE ddl_stamped ADD COLUMN token uuid DEFAULT gen_random_uuid()")
        conn.execute("INSERT INTO ddl_stamped (id) VALUES (21)")
    checked.proxy.wait_mirror_idle()
    assert_same_schema(checked.pair, "ddl_stamped")
    if store_differences(checked.pair, ["ddl_stamped"]):
        reported = [e for e in checked.new_divergences() if "ddl_stamped" in str(e)]
        assert reported, (
            f"ddl_stamped differs and nothing was reported: {checked.new_divergences()}"
        )
    else:
        assert checked.new_divergences() == []


# ------------------------------------------------------------ the sync level


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_write_is_on_new_when_the_client_sees_its_commit(
    pool: StoresPool, protocol: Protocol
) -> None:
    """Lock-step: the mirror commits before the old store does, so a client that got
    its answer finds its write on the new store at once, without waiting for the mirror.
    (Only sync promises this: async applies the mirror after the commit.)"""
    checked = pool.stores("sync")
    table = f"seen_{protocol}"
    checked.pair.run_both(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    with (
        connect(checked, protocol) as client,
        checked.pair.connect("new", autocommit=True) as new,
    ):
        for i in range(1, 21):
            run(client, protocol, f"INSERT INTO {table} VALUES (%s, 0)", (i,))  # noqa: S608
            with client.transaction():
                run(client, protocol, f"UPDATE {table} SET v = v + 1 WHERE id = %s", (i,))
                run(client, protocol, f"UPDATE {table} SET v = v * 3 WHERE id = %s", (i,))
            got = new.execute(f"SELECT v FROM {table} WHERE id = %s", (i,)).fetchone()  # noqa: S608
            assert got == (3,), f"write {i} not on new when the client saw its commit: {got}"
    settle(checked, table)


@both_levels
@pytest.mark.parametrize("in_txn", [False, True], ids=["autocommit", "transaction"])
def test_mirror_refusal_never_fails_the_client(checked: Stores, in_txn: bool) -> None:
    """The new store refuses a write (a constraint only it has): the client's write
    still commits on old, and the refusal is a divergence with the unit kept for repair."""
    table = f"refused_{'txn' if in_txn else 'auto'}"
    checked.pair.run_both(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    with checked.pair.connect("new", autocommit=True) as c:
        c.execute(f"ALTER TABLE {table} ADD CHECK (v < 100)")
    rejected_before = checked.proxy.status()["rejected_units"]
    with connect(checked, autocommit=not in_txn) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 5)")
        conn.execute(f"INSERT INTO {table} VALUES (2, 500)")
        conn.commit()
    with checked.pair.connect("old") as c:
        rows = c.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()
    assert rows == [(1, 5), (2, 500)]
    checked.proxy.wait_mirror_idle()
    errors = [e for e in checked.new_divergences() if table in str(e.get("tables"))]
    assert [e["kind"] for e in errors] == ["error"], checked.new_divergences()
    assert errors[0]["new_error"]["sqlstate"] == "23514"
    assert checked.proxy.status()["rejected_units"] == rejected_before + 1
