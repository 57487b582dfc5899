"""Repair and undo on the real servers: PostgreSQL -> PostgreSQL, MariaDB -> MariaDB.

Each test seeds the same rows on both stores, plants differences on the target
(missing, extra and mismatched rows, composite keys, NULLs, a keyless table with
duplicate rows), then checks with its own queries that a dry run changes
nothing, that ``apply`` makes the target equal to the authoritative store, and
that ``undo`` puts back the target's exact contents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from comparator.diff import RowDiff
from comparator.dsn import StoreDsn
from comparator.repair import RepairError, UndoFileError, repair, undo
from tests.comparator.test_repair_stores import (  # noqa: F401  (the fixture)
    Stores,
    _pg_pool,
    query,
    run,
    run_many,
    stores_fixture,
)

pytestmark = pytest.mark.integration

PG_TABLES = [
    """CREATE TABLE items (region text, id int, name varchar(40), qty int, price numeric(10,2),
        seen timestamptz, doc jsonb, tag uuid, raw bytea, PRIMARY KEY (region, id))""",
    "CREATE TABLE audit (at timestamp, what text, n int)",
]
MY_TABLES = [
    """CREATE TABLE items (region varchar(10), id int, name varchar(40), qty int,
        price decimal(10,2), seen datetime(6), doc json, tag char(36), raw blob,
        flag tinyint(1), PRIMARY KEY (region, id))""",
    "CREATE TABLE audit (at datetime, what text, n int)",
]
REGIONS = ("eu", "us", "ap")


def seed(dsn: StoreDsn) -> None:
    pg = dsn.engine == "postgresql"
    rows = []
    for region in REGIONS:
        for i in range(1, 61):
            seen = dt.datetime(2024, 1, 1 + i % 28, 10, 0, i % 60, 123456, tzinfo=dt.UTC)
            rows.append(
                (
                    region,
                    i,
                    f"item {i}",
                    None if i % 7 == 0 else i,
                    Decimal(i) + Decimal("0.25"),
                    seen if pg else seen.replace(tzinfo=None),
                    orjson.dumps({"k": i, "tags": ["a", None]}).decode(),
                    str(uuid.UUID(int=i)),
                    None if i % 5 == 0 else i.to_bytes(2, "big"),
                    *(() if pg else (i % 2,)),
                )
            )
    marks = ", ".join(["%s"] * len(rows[0]))
    run_many(dsn, f"INSERT INTO items VALUES ({marks})", rows)
    login = dt.datetime(2024, 1, 1)
    run_many(
        dsn,
        "INSERT INTO audit VALUES (%s, %s, %s)",
        [
            (login, "login", 1),
            (login, "login", 1),  # a duplicate row: the table is a multiset
            (dt.datetime(2024, 1, 2), None, 2),
            (dt.datetime(2024, 1, 3), "logout", None),
        ],
    )


def plant(target: StoreDsn, schema: str) -> list[RowDiff]:
    """Differences on the target, and the RowDiffs a compare reports for them (named
    after the authoritative side, as the compare does)."""
    pg = target.engine == "postgresql"
    run(
        target,
        [
            # missing: the first and last keys and one in the middle
            "DELETE FROM items WHERE (region = 'ap' AND id = 1) OR (region = 'us' AND id = 60)"
            " OR (region = 'eu' AND id = 30)",
            # extra
            "INSERT INTO items (region, id, name) VALUES ('zz', 1, 'stray'), ('eu', 61, NULL)",
            # mismatched: a value changed, a NULL set, a NULL filled, the JSON changed
            "UPDATE items SET name = 'changed' WHERE region = 'eu' AND id = 2",
            "UPDATE items SET price = NULL, seen = NULL WHERE region = 'us' AND id = 3",
            "UPDATE items SET qty = 99 WHERE region = 'ap' AND id = 7",
            "UPDATE items SET doc = '{\"k\": 0}' WHERE region = 'ap' AND id = 8",
            # keyless: one of two duplicate rows missing, a row extra, a NULL row extra
            (
                "DELETE FROM audit WHERE ctid IN (SELECT ctid FROM audit WHERE what = 'login' LIMIT 1)"
                if pg
                else "DELETE FROM audit WHERE what = 'login' LIMIT 1"
            ),
            "INSERT INTO audit VALUES ('2024-02-01 00:00:00', 'stray', 5), (NULL, NULL, NULL)",
        ],
    )
    return [
        RowDiff(
            schema,
            "items",
            ["region", "id"],
            missing=[("ap", 1), ("us", 60), ("eu", 30)],
            extra=[("zz", 1), ("eu", 61)],
            mismatched=[("eu", 2), ("us", 3), ("ap", 7), ("ap", 8)],
        ),
        RowDiff(
            schema,
            "audit",
            [],
            missing=[(_ts("2024-01-01 00:00:00"), "login", 1)],
            extra=[(_ts("2024-02-01 00:00:00"), "stray", 5), (None, None, None)],
            mismatched=[],
        ),
    ]


def _ts(text: str) -> Any:
    return dt.datetime.fromisoformat(text)


def contents(dsn: StoreDsn) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both tables, in key order, as the store returns them."""
    order = "region, id" if dsn.engine == "postgresql" else "region, id"
    audit_order = (
        "at, what, n"
        if dsn.engine == "mysql"
        else "at NULLS FIRST, what NULLS FIRST, n NULLS FIRST"
    )
    return {
        "items": query(dsn, f"SELECT * FROM items ORDER BY {order}"),
        "audit": query(dsn, f"SELECT * FROM audit ORDER BY {audit_order}"),
    }


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
async def test_repair_dry_run_apply_and_undo(stores: Stores, engine: str, tmp_path: Path) -> None:
    auth, target = stores.new(engine), stores.new(engine)
    tables = PG_TABLES if engine == "postgresql" else MY_TABLES
    for dsn in (auth, target):
        run(dsn, tables)
        seed(dsn)
    # Two MariaDB databases on one server: the diff names the authoritative one, and
    # repair must still write only to the target's.
    diffs = plant(target, "public" if engine == "postgresql" else auth.database)
    before = contents(target)
    wanted = contents(auth)
    assert before != wanted
    undo_path = tmp_path / "repair.undo.jsonl"

    dry = await repair(auth, target, diffs, apply=False, undo_path=undo_path)
    assert contents(target) == before
    assert not undo_path.exists()
    assert dry.dry_run and dry.to_json()["dry_run"] is True
    schema = "public" if engine == "postgresql" else target.database
    assert dry.to_json()["tables"][f"{schema}.items"] == {
        "inserted": 3,
        "updated": 4,
        "deleted": 2,
        "unchanged": 0,
    }
    assert dry.to_json()["tables"][f"{schema}.audit"] == {
        "inserted": 1,
        "updated": 0,
        "deleted": 2,
        "unchanged": 0,
    }
    assert "DRY RUN" in dry.render()

    done = await repair(auth, target, diffs, apply=True, undo_path=undo_path, batch_size=3)
    assert contents(target) == wanted
    assert done.to_json()["tables"] == dry.to_json()["tables"]
    assert done.to_json()["undo_path"] == str(undo_path) and not done.dry_run
    assert undo_path.exists()

    again = await repair(auth, target, diffs, apply=False, undo_path=undo_path)
    assert again.totals().unchanged == 9 + 3  # nothing left to do

    with pytest.raises(UndoFileError, match="already exists"):
        await repair(auth, target, diffs, apply=True, undo_path=undo_path)

    restored = await undo(target, undo_path)
    assert contents(target) == before
    assert restored.to_json()["tables"][f"{schema}.items"] == {
        "inserted": 2,
        "updated": 4,
        "deleted": 3,
        "unchanged": 0,
    }
    assert "undo of" in restored.render()
    # Running the undo again changes nothing.
    twice = await undo(target, undo_path)
    assert contents(target) == before
    assert twice.totals().inserted == twice.totals().deleted == twice.totals().updated == 0


async def test_undo_refuses_another_target(stores: Stores, tmp_path: Path) -> None:
    auth, target, other = (
        stores.new("postgresql"),
        stores.new("postgresql"),
        stores.new("postgresql"),
    )
    for dsn in (auth, target):
        run(dsn, ["CREATE TABLE t (id int PRIMARY KEY, v text)"])
    run(auth, ["INSERT INTO t VALUES (1, 'a')"])
    path = tmp_path / "u.jsonl"
    await repair(auth, target, [RowDiff("public", "t", ["id"], [(1,)], [], [])], True, path)
    assert query(target, "SELECT * FROM t") == [(1, "a")]
    with pytest.raises(UndoFileError, match="was written for"):
        await undo(other, path)
    # A torn last line (a crash while appending) is ignored: its batch never ran.
    with path.open("ab") as f:
        f.write(b'{"kind": "row", "sch')
    await undo(target, path)
    assert query(target, "SELECT * FROM t") == []


async def test_repair_refuses_different_columns(stores: Stores, tmp_path: Path) -> None:
    auth, target = stores.new("postgresql"), stores.new("postgresql")
    run(auth, ["CREATE TABLE t (id int PRIMARY KEY, v text, w int)"])
    run(target, ["CREATE TABLE t (id int PRIMARY KEY, v text)"])
    with pytest.raises(RepairError, match="columns differ"):
        await repair(
            auth, target, [RowDiff("public", "t", ["id"], [(1,)], [], [])], False, tmp_path / "u"
        )


async def test_serial_sequence_moves_past_repaired_keys(stores: Stores, tmp_path: Path) -> None:
    auth, target = stores.new("postgresql"), stores.new("postgresql")
    for dsn in (auth, target):
        run(
            dsn,
            [
                "CREATE TABLE t (id serial PRIMARY KEY, v text)",
                "CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, twice int GENERATED ALWAYS AS (id * 2) STORED)",
            ],
        )
    run(
        auth,
        [
            "INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 5)",
            "INSERT INTO g (v) VALUES ('a'), ('b')",
        ],
    )
    diffs = [
        RowDiff("public", "t", ["id"], [(i,) for i in range(1, 6)], [], []),
        RowDiff("public", "g", ["id"], [(1,), (2,)], [], []),
    ]
    await repair(auth, target, diffs, True, tmp_path / "u")
    # The application's next insert on the target must not collide with repaired keys.
    run(target, ["INSERT INTO t (v) VALUES ('new')", "INSERT INTO g (v) VALUES ('c')"])
    assert query(target, "SELECT max(id) FROM t") == [(6,)]
    assert query(target, "SELECT id, v, twice FROM g ORDER BY id") == [
        (1, "a", 2),
        (2, "b", 4),
        (3, "c", 6),
    ]


async def test_undo_after_a_repair_that_failed_half_way(stores: Stores, tmp_path: Path) -> None:
    """Batches committed before a failure are undone; the failed batch's records,
    already in the undo file, restore rows it never changed (a no-op)."""
    auth, target = stores.new("postgresql"), stores.new("postgresql")
    run(auth, ["CREATE TABLE t (id int PRIMARY KEY, v text)"])
    # The target refuses one value the authoritative store holds: its batch fails.
    run(target, ["CREATE TABLE t (id int PRIMARY KEY, v text CHECK (v <> 'refused'))"])
    run_many(auth, "INSERT INTO t VALUES (%s, %s)", [(i, f"a{i}") for i in range(1, 11)])
    run(auth, ["UPDATE t SET v = 'refused' WHERE id = 8"])
    run_many(target, "INSERT INTO t VALUES (%s, %s)", [(i, f"b{i}") for i in range(1, 11, 2)])
    before = query(target, "SELECT * FROM t ORDER BY id")
    path = tmp_path / "u.jsonl"
    diff = RowDiff("public", "t", ["id"], [(i,) for i in range(2, 11, 2)], [], [(1,), (3,)])
    with pytest.raises(RepairError, match="check constraint") as stopped:
        await repair(auth, target, [diff], apply=True, undo_path=path, batch_size=3)
    assert f"--undo {path}" in str(stopped.value)
    partly = query(target, "SELECT * FROM t ORDER BY id")
    assert partly != before and (8, "a8") not in partly
    await undo(target, path)
    assert query(target, "SELECT * FROM t ORDER BY id") == before


async def test_repair_waits_for_a_write_in_flight_on_the_authoritative_row(
    stores: Stores, tmp_path: Path
) -> None:
    """A transaction still open on the authoritative row holds the repair of that row
    back; once it commits (and is mirrored), repair copies the new value, not the old."""
    auth, target = stores.new("postgresql"), stores.new("postgresql")
    for dsn in (auth, target):
        run(dsn, ["CREATE TABLE t (id int PRIMARY KEY, v text)"])
    run(auth, ["INSERT INTO t VALUES (1, 'old'), (2, 'two')"])
    run(target, ["INSERT INTO t VALUES (1, 'stale')"])
    app = await asyncpg.connect(
        host=auth.host, port=auth.port, user=auth.user, database=auth.database
    )
    try:
        tx = app.transaction()
        await tx.start()
        await app.execute("UPDATE t SET v = 'new' WHERE id = 1")
        diff = RowDiff("public", "t", ["id"], [(2,)], [], [(1,)])
        task = asyncio.create_task(repair(auth, target, [diff], True, tmp_path / "u"))
        await asyncio.sleep(0.5)
        assert not task.done()  # waiting on the authoritative row lock
        run(target, ["UPDATE t SET v = 'new' WHERE id = 1"])  # the proxy's mirror
        await tx.commit()
        report = await asyncio.wait_for(task, 30)
    finally:
        await app.close()
    assert query(target, "SELECT * FROM t ORDER BY id") == [(1, "new"), (2, "two")]
    assert report.totals().unchanged == 1 and report.totals().inserted == 1
