"""Row hashes and timestamp texts computed by both engines for real, against the Python twins.

The pushed-down checksum only works if PostgreSQL and MariaDB turn the same row text
into the same hash and the same 60-bit summand, and the same timestamp into the same
text.  Each table row below is evaluated by both databases, through the comparator's
own connections (their session settings are part of the contract), and by Python.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from comparator.dsn import parse_store_dsn
from comparator.normalize import Column, plan_column, timestamp_text
from comparator.rowhash import hash_sum_sql, row_hash, row_hash_sql, row_text
from comparator.run import make_source
from tests.comparator.conftest import Db

pytestmark = pytest.mark.integration

# Row texts as row_text frames them: NULL vs '' vs 'NULL', separators inside values,
# multibyte UTF-8 (hashed as UTF-8 bytes on both engines), and a long text.
ROW_TEXTS = [
    "",
    row_text([None], [True]),
    row_text([""], [False]),
    row_text(["NULL"], [False]),
    row_text([None], [False]),
    row_text(["1", "a|b", None], [True, False, False]),
    row_text(["ünïcødé ✓", "🙂"], [False, False]),
    row_text(["1.5e-07", "2024-01-01 00:00:01.000000"], [True, True]),
    row_text(["x" * 5000], [False]),
    "'quoted' \\ backslash\n\ttab",
]


async def _evaluate(db: Db, exprs: list[str], args: list[Any]) -> list[Any]:
    """One row of ``exprs`` evaluated on ``db`` through a comparator source."""
    src = make_source(parse_store_dsn(db.url), 1)
    await src.open()
    try:
        if db.engine == "postgresql":
            rows = await src._fetch(f"SELECT {', '.join(exprs)}", *args)  # type: ignore[attr-defined]
        else:
            rows = await src._fetch(f"SELECT {', '.join(exprs)}", args)  # type: ignore[attr-defined]
        return list(rows[0])
    finally:
        await src.close()


def test_row_hash_and_summand_agree_on_both_engines(make_db: Callable[[str], Db]) -> None:
    for db in (make_db("postgresql"), make_db("mysql")):
        pg = db.engine == "postgresql"
        exprs: list[str] = []
        for i in range(1, len(ROW_TEXTS) + 1):
            param = f"${i}::text" if pg else "%s"
            hashed = row_hash_sql(db.engine, param)  # type: ignore[arg-type]
            exprs += [hashed, hash_sum_sql(db.engine, hashed)]  # type: ignore[arg-type]
        # asyncpg numbers its parameters: each text is passed once, used twice.
        args = list(ROW_TEXTS) if pg else [t for t in ROW_TEXTS for _ in (0, 1)]
        got = asyncio.run(_evaluate(db, exprs, args))
        want: list[Any] = []
        for text in ROW_TEXTS:
            h = row_hash(text)
            want += [h, int(h[:15], 16)]
        assert [str(v) if i % 2 == 0 else int(v) for i, v in enumerate(got)] == want, db.engine


def test_row_hashes_of_different_texts_differ() -> None:
    hashes = {row_hash(t) for t in ROW_TEXTS}
    assert len(hashes) == len(ROW_TEXTS)


def _col(engine: str, typ: str) -> Column:
    precision = int(typ.split("(")[1].rstrip(")")) if "(" in typ else None
    return Column("v", engine, typ, typ.split("(")[0], datetime_precision=precision)  # type: ignore[arg-type]


# (stored value, precision compared at); the expected text is timestamp_text's.
# PostgreSQL rounds to the precision, as timestamp_text does.
PG_TIMESTAMPS = [
    (dt.datetime(2024, 1, 1, 0, 0, 1), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 500000), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 123), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 120000), 6),
    (dt.datetime(99, 12, 31, 23, 59, 59, 999999), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 123456), 3),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 999500), 3),  # rounds into the next second
    (dt.datetime(2024, 1, 1, 0, 0, 1, 100000), 2),
    (dt.datetime(2024, 1, 1, 0, 0, 1), 2),
    (dt.datetime(2024, 2, 29, 23, 59, 59, 500000), 0),  # rounds into the next day
    (dt.datetime(2024, 2, 29, 23, 59, 59), 0),
]


@pytest.mark.parametrize("with_zone", [False, True])
def test_pg_timestamp_text_matches_python(make_db: Callable[[str], Db], with_zone: bool) -> None:
    db = make_db("postgresql")
    typ = "timestamptz" if with_zone else "timestamp(6)"
    exprs, args = [], []
    for i, (value, p) in enumerate(PG_TIMESTAMPS, start=1):
        old = _col("postgresql", typ)
        plan = plan_column(old, _col("mysql", f"datetime({p})"))
        exprs.append(plan.old_sql.replace('"v"', f"${i}::{typ}"))
        args.append(value.replace(tzinfo=dt.UTC) if with_zone else value)
    got = asyncio.run(_evaluate(db, exprs, args))
    assert got == [timestamp_text(v, p) for v, p in PG_TIMESTAMPS]


# MariaDB truncates rather than rounds when it narrows a DATETIME: values here need no
# rounding, so both engines and Python must print the same text.
SHARED_TIMESTAMPS = [
    (dt.datetime(2024, 1, 1, 0, 0, 1), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 500000), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 123), 6),
    (dt.datetime(1000, 1, 1, 0, 0, 0, 1), 6),
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999998), 6),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 123000), 3),
    (dt.datetime(2024, 1, 1, 0, 0, 1), 3),
    (dt.datetime(2024, 1, 1, 0, 0, 1, 100000), 1),
    (dt.datetime(2024, 2, 29, 23, 59, 59), 0),
]


def test_timestamp_text_same_on_both_engines(make_db: Callable[[str], Db]) -> None:
    pg_db, my_db = make_db("postgresql"), make_db("mysql")
    pg_exprs, my_exprs, values = [], [], []
    for i, (value, p) in enumerate(SHARED_TIMESTAMPS, start=1):
        # Compared at p digits: PostgreSQL narrows its timestamp(6), MariaDB prints its own.
        plan = plan_column(_col("postgresql", "timestamp(6)"), _col("mysql", f"datetime({p})"))
        pg_exprs.append(plan.old_sql.replace('"v"', f"${i}::timestamp(6)"))
        my_exprs.append(f"CAST(CAST(%s AS DATETIME({p})) AS CHAR)")
        values.append(value)
    got_pg = asyncio.run(_evaluate(pg_db, pg_exprs, values))
    got_my = asyncio.run(_evaluate(my_db, my_exprs, [v.isoformat(sep=" ") for v in values]))
    want = [timestamp_text(v, p) for v, p in SHARED_TIMESTAMPS]
    assert got_pg == want
    assert got_my == want


def test_pg_timestamps_out_of_mariadb_range_keep_distinct_texts(
    make_db: Callable[[str], Db],
) -> None:
    db = make_db("postgresql")
    plan = plan_column(_col("postgresql", "timestamp(6)"), _col("mysql", "datetime(6)"))
    literals = [
        "infinity",
        "-infinity",
        "2000-01-01 00:00:00 BC",
        "2000-01-01 00:00:00",
        "12000-01-01 00:00:01.5",
        "12000-01-01 00:00:01",
    ]
    exprs = [plan.old_sql.replace('"v"', f"'{lit}'::timestamp(6)") for lit in literals]
    got = asyncio.run(_evaluate(db, exprs, []))
    assert None not in got  # NULL has its own marker in the row text
    assert len(set(got)) == len(literals)
    assert got[3] == "2000-01-01 00:00:00.000000"
