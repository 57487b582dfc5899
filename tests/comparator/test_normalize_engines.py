"""Normalization on both engines for real: equal values give equal texts and checksums.

One table per engine holds a column for every type pair of the comparator's table
(``bool`` vs ``tinyint(1)``, ``numeric`` vs ``decimal`` at another scale, floats,
timestamps at different precisions, ``timestamptz`` vs ``timestamp``, ``char``
padding, ``bytea`` vs ``blob``, JSON, ``uuid`` vs ``char(36)``/``binary(16)``, enums,
NULL vs '' vs 'NULL').  The canonical text each database computes must be identical
row by row; then one value per column is changed on the new store and the comparator
must report exactly that row with exactly that column.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from comparator.dsn import parse_store_dsn
from comparator.plan import make_plan
from comparator.run import make_source
from tests.comparator.conftest import Db, compare_cli

pytestmark = pytest.mark.integration

# (column, PostgreSQL type, MariaDB type)
COLUMNS = [
    ("i", "integer", "int"),
    ("big", "bigint", "bigint"),
    ("b", "boolean", "tinyint(1)"),
    ("d", "numeric(10,2)", "decimal(12,4)"),
    ("f", "double precision", "double"),
    ("r", "real", "float"),
    ("ts", "timestamp(3)", "datetime(3)"),
    ("tz", "timestamptz", "timestamp(6) NULL"),
    ("day", "date", "date"),
    ("tm", "time(0)", "time"),
    ("t", "text", "text"),
    ("c", "char(6)", "char(6)"),
    ("vc", "varchar(20)", "varchar(20)"),
    ("bin", "bytea", "blob"),
    ("j", "jsonb", "json"),
    ("u", "uuid", "char(36)"),
    ("ub", "uuid", "binary(16)"),
    ("e", "mood", "enum('sad','ok','happy')"),
]
U1 = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
U2 = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
UTC = dt.UTC


def rows() -> list[dict[str, Any]]:
    base = dt.datetime(2024, 3, 10, 12, 30, 45, 123000)
    values = [
        dict(i=0, big=0, b=False, d=Decimal("0.00"), f=0.0, r=0.0, t="", c="", vc="", bin=b""),
        dict(i=-1, big=-(2**63), b=True, d=Decimal("-0.00"), f=-0.0, t="NULL", c="NULL"),
        dict(i=2**31 - 1, big=2**63 - 1, d=Decimal("12345678.99"), f=1e300, r=3.5, t="N"),
        dict(i=42, d=Decimal("-1.50"), f=0.1, r=0.1, t="a|b", vc="1:a", bin=b"\x00|\xff"),
        dict(
            f=1 / 3, r=0.001, t="ünïcødé ✓", c="ab", vc="trailing  ", j='{"b": [1, 2], "a": null}'
        ),
        dict(f=123456789.125, t="line\nbreak\ttab", j='{"k": "v", "n": 1.5}', e="happy"),
        dict(f=1e-4, t="x" * 300, j="[]", u=U1, ub=U2, e="sad"),
        dict(t="'quoted' \\ backslash", j='"just a string"', u=U2, ub=U1, e="ok"),
    ]
    out = []
    for n, extra in enumerate(values, start=1):
        row: dict[str, Any] = {name: None for name, _, _ in COLUMNS}
        row.update(
            ts=base + dt.timedelta(days=n, microseconds=n * 1000),
            tz=dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(hours=n, microseconds=n),
            day=dt.date(2024, 2, 28) + dt.timedelta(days=n),
            tm=dt.time(n, 59, 59),
        )
        row.update(extra)
        row["id"] = n
        out.append(row)
    # Rows the second half of the test changes, one column each.
    for n in range(len(out) + 1, len(out) + 1 + len(COLUMNS)):
        row = dict(out[n % len(values)], id=n)
        out.append(row)
    return out


CHANGED: dict[str, Any] = {
    "i": 7,
    "big": 8,
    "b": True,
    "d": Decimal("0.01"),
    "f": 2.5,
    "r": 2.5,
    "ts": dt.datetime(2020, 1, 1, 0, 0, 0, 1000),
    "tz": dt.datetime(2020, 1, 1, tzinfo=UTC),
    "day": dt.date(2020, 1, 1),
    "tm": dt.time(0, 0, 1),
    "t": "changed",
    "c": "zz",
    "vc": "changed",
    "bin": b"\x01",
    "j": '{"changed": true}',
    "u": uuid.UUID("11111111-1111-1111-1111-111111111111"),
    "ub": uuid.UUID("22222222-2222-2222-2222-222222222222"),
    "e": "sad",
}


def create(db: Db) -> None:
    pg = db.engine == "postgresql"
    cols = ", ".join(f"{n} {p if pg else m}" for n, p, m in COLUMNS)
    stmts = [f"CREATE TABLE typed (id int PRIMARY KEY, {cols})"]
    if pg:
        stmts.insert(0, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    db.run(*stmts)


def engine_value(db: Db, name: str, value: Any) -> Any:
    if value is None:
        return None
    if db.engine == "mysql":
        if name == "tz":
            return value.astimezone(UTC).replace(tzinfo=None)
        if name == "ub":
            return value.bytes
        if name == "u":
            return str(value)
    elif name in ("u", "ub"):
        return str(value)
    return value


def insert(db: Db, data: list[dict[str, Any]]) -> None:
    names = ["id"] + [n for n, _, _ in COLUMNS]
    marks = ", ".join(["%s"] * len(names))
    db.many(
        f"INSERT INTO typed ({', '.join(names)}) VALUES ({marks})",
        [[engine_value(db, n, r[n]) for n in names] for r in data],
    )


async def canonical_texts(old: Db, new: Db) -> tuple[list[Any], list[Any], Any]:
    a = make_source(parse_store_dsn(old.url), 2)
    b = make_source(parse_store_dsn(new.url), 2)
    await asyncio.gather(a.open(), b.open())
    try:
        sa, sb = await asyncio.gather(
            a.describe(old.schema, "typed"), b.describe(new.schema, "typed")
        )
        assert sa is not None and sb is not None
        plan = make_plan(sa, sb, "old", "new")
        texts = []
        for src, tq in ((a, plan.a), (b, plan.b)):
            # What the row text concatenates: MySQL's CONCAT renders numbers as CAST AS CHAR.
            exprs = (
                tq.exprs if tq.engine == "postgresql" else [f"CAST({e} AS CHAR)" for e in tq.exprs]
            )
            sql = f"SELECT {', '.join(exprs)} FROM {tq.qualified} AS src ORDER BY src.id"
            texts.append(await src._fetch(sql))  # type: ignore[attr-defined]
        sums = await asyncio.gather(a.checksum(plan.a, None, None), b.checksum(plan.b, None, None))
        return [tuple(r) for r in texts[0]], [tuple(r) for r in texts[1]], sums
    finally:
        await asyncio.gather(a.close(), b.close())


def test_same_values_same_texts_and_checksums_then_one_change_per_type(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    old, new = make_db("mysql"), make_db("postgresql")
    data = rows()
    for db in (old, new):
        create(db)
        insert(db, data)
    texts_old, texts_new, (sum_old, sum_new) = asyncio.run(canonical_texts(old, new))
    names = [n for n, _, _ in COLUMNS if n not in ("j",)]  # JSON is compared parsed
    for ro, rn in zip(texts_old, texts_new, strict=True):
        by_col_old = dict(zip(["id", *[n for n, _, _ in COLUMNS]], ro, strict=False))
        by_col_new = dict(zip(["id", *[n for n, _, _ in COLUMNS]], rn, strict=False))
        for name in names:
            assert by_col_old[name] == by_col_new[name], (name, by_col_old[name], by_col_new[name])
    assert sum_old == sum_new
    assert compare_cli(old, new, cwd=tmp_path).code == 0
    # Floats below 1e-4 print differently (1e-07 vs 0.0000001): the checksums differ,
    # the row diff compares the values and still finds the stores identical.
    tiny = dict(data[0], id=1000, f=1e-5, r=1e-7)
    for db in (old, new):
        insert(db, [tiny])
    assert compare_cli(old, new, cwd=tmp_path).code == 0

    first_changed = len(data) - len(COLUMNS) + 1
    for n, (name, _, _) in enumerate(COLUMNS, start=first_changed):
        value = engine_value(new, name, CHANGED[name])
        new.many(f"UPDATE typed SET {name} = %s WHERE id = %s", [(value, n)])
    found = compare_cli(old, new, cwd=tmp_path)
    assert found.code == 1
    table = found.table("typed")
    got = {s["key"][0]: s["columns"] for s in table["samples"]["mismatched"]}
    want = {n: [name] for n, (name, _, _) in enumerate(COLUMNS, start=first_changed)}
    assert got == want
    assert table["missing"] == table["extra"] == 0
    assert any("tolerance" in note for note in table["inexact"])


def test_pg_to_pg_native_types(make_db: Callable[[str], Db], tmp_path: Path) -> None:
    old, new = make_db("postgresql"), make_db("postgresql")
    data = rows()
    for db in (old, new):
        create(db)
        insert(db, data)
    assert compare_cli(old, new, cwd=tmp_path).code == 0
    first_changed = len(data) - len(COLUMNS) + 1
    for n, (name, _, _) in enumerate(COLUMNS, start=first_changed):
        new.many(
            f"UPDATE typed SET {name} = %s WHERE id = %s",
            [(engine_value(new, name, CHANGED[name]), n)],
        )
    table = compare_cli(old, new, cwd=tmp_path).table("typed")
    got = {s["key"][0]: s["columns"] for s in table["samples"]["mismatched"]}
    assert got == {n: [name] for n, (name, _, _) in enumerate(COLUMNS, start=first_changed)}
    assert table["inexact"] == []
