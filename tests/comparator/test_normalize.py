"""Normalization tables (pure): families, plans per type pair, Python-side canonical values."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from comparator.normalize import (
    Column,
    Family,
    family,
    plan_column,
    time_text,
    timestamp_text,
)
from comparator.rowhash import row_text


def pg(name: str, typ: str, data_type: str | None = None, **kw: Any) -> Column:
    return Column(name, "postgresql", typ, data_type or typ.split("(")[0], **kw)


def my(name: str, typ: str, data_type: str | None = None, **kw: Any) -> Column:
    return Column(name, "mysql", typ, data_type or typ.split("(")[0], **kw)


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (pg("c", "integer", "int4"), Family.INT),
        (pg("c", "boolean", "bool"), Family.BOOL),
        (pg("c", "numeric(10,2)", "numeric"), Family.DECIMAL),
        (pg("c", "double precision", "float8"), Family.FLOAT),
        (pg("c", "timestamp(3) without time zone", "timestamp"), Family.TIMESTAMP),
        (pg("c", "timestamp with time zone", "timestamptz"), Family.TIMESTAMPTZ),
        (pg("c", "time without time zone", "time"), Family.TIME),
        (pg("c", "character(5)", "bpchar"), Family.CHAR),
        (pg("c", "character varying(20)", "varchar"), Family.TEXT),
        (pg("c", "bytea"), Family.BINARY),
        (pg("c", "jsonb"), Family.JSON),
        (pg("c", "uuid"), Family.UUID),
        (pg("c", "mood", is_enum=True), Family.ENUM),
        (pg("c", "point"), Family.OTHER),
        (my("c", "tinyint(1)", "tinyint"), Family.BOOL),
        (my("c", "tinyint(4)", "tinyint"), Family.INT),
        (my("c", "bigint(20) unsigned", "bigint"), Family.INT),
        (my("c", "decimal(12,2)", "decimal"), Family.DECIMAL),
        (my("c", "datetime(6)", "datetime"), Family.TIMESTAMP),
        (my("c", "timestamp", "timestamp"), Family.TIMESTAMPTZ),
        (my("c", "char(36)", "char"), Family.CHAR),
        (my("c", "binary(16)", "binary"), Family.BINARY),
        (my("c", "longblob", "longblob"), Family.BINARY),
        (my("c", "enum('a','b')", "enum"), Family.ENUM),
        (my("c", "json", "json"), Family.JSON),
    ],
)
def test_family(column: Column, expected: Family) -> None:
    assert family(column) is expected


def test_same_engine_same_type_is_native_and_exact() -> None:
    plan = plan_column(pg("c", "double precision", "float8"), pg("c", "double precision", "float8"))
    assert plan.old_sql == plan.new_sql == '"c"::text'
    assert plan.inexact is None and not plan.float_tolerance
    assert not plan.equal(0.1, 0.1000000000000001)


@pytest.mark.parametrize(
    ("old", "new", "a", "b", "equal"),
    [
        (pg("c", "boolean", "bool"), my("c", "tinyint(1)", "tinyint"), True, 1, True),
        (pg("c", "boolean", "bool"), my("c", "tinyint(1)", "tinyint"), False, 1, False),
        (pg("c", "integer", "int4"), my("c", "bigint", "bigint"), 7, 7, True),
        (
            pg("c", "numeric(10,2)", "numeric", numeric_scale=2),
            my("c", "decimal(12,4)", "decimal", numeric_scale=4),
            Decimal("1.50"),
            Decimal("1.5000"),
            True,
        ),
        (
            pg("c", "numeric(10,2)", "numeric", numeric_scale=2),
            my("c", "decimal(10,2)", "decimal", numeric_scale=2),
            Decimal("-0.00"),
            Decimal("0.00"),
            True,
        ),
        (
            pg("c", "numeric(10,2)", "numeric", numeric_scale=2),
            my("c", "decimal(10,4)", "decimal", numeric_scale=4),
            Decimal("1.50"),
            Decimal("1.5001"),
            False,
        ),
        (pg("c", "double precision", "float8"), my("c", "double"), 0.1, 0.1 + 1e-17, True),
        (pg("c", "double precision", "float8"), my("c", "double"), 0.1, 0.1000001, False),
        (
            pg("c", "timestamp(6) without time zone", "timestamp", datetime_precision=6),
            my("c", "datetime(3)", "datetime", datetime_precision=3),
            dt.datetime(2024, 1, 1, 0, 0, 0, 123456),
            dt.datetime(2024, 1, 1, 0, 0, 0, 123000),
            True,  # compared at 3 digits: .123456 rounds to .123
        ),
        (
            pg("c", "timestamp with time zone", "timestamptz", datetime_precision=6),
            my("c", "timestamp(6)", "timestamp", datetime_precision=6),
            dt.datetime(2024, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.datetime(2024, 1, 1, 0, 0),
            True,  # the same instant
        ),
        (
            pg("c", "time without time zone", "time", datetime_precision=6),
            my("c", "time", "time", datetime_precision=0),
            dt.time(12, 30, 5, 400000),
            dt.timedelta(hours=12, minutes=30, seconds=5),
            True,
        ),
        (pg("c", "character(5)", "bpchar"), my("c", "varchar(5)", "varchar"), "ab", "ab  ", True),
        (pg("c", "text"), my("c", "text"), "", None, False),
        (pg("c", "text"), my("c", "text"), "NULL", None, False),
        (pg("c", "bytea"), my("c", "blob"), b"\x00\xff", b"\x00\xff", True),
        (pg("c", "jsonb"), my("c", "json"), '{"a": 1, "b": [1, 2]}', '{"b":[1,2],"a":1}', True),
        (pg("c", "jsonb"), my("c", "json"), '{"a": 1}', '{"a": 2}', False),
        (
            pg("c", "uuid"),
            my("c", "char(36)", "char"),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "12345678-1234-5678-1234-567812345678".upper(),
            True,
        ),
        (
            pg("c", "uuid"),
            my("c", "binary(16)", "binary"),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            uuid.UUID("12345678-1234-5678-1234-567812345678").bytes,
            True,
        ),
        (pg("c", "mood", is_enum=True), my("c", "enum('sad','ok')", "enum"), "ok", "ok", True),
    ],
)
def test_cross_engine_values(old: Column, new: Column, a: Any, b: Any, equal: bool) -> None:
    assert plan_column(old, new).equal(a, b) is equal


def test_inexact_pairs_say_why() -> None:
    floats = plan_column(pg("c", "double precision", "float8"), my("c", "double"))
    assert floats.inexact and "tolerance" in floats.inexact
    ts = plan_column(
        pg("c", "timestamp(6) without time zone", "timestamp", datetime_precision=6),
        my("c", "datetime", "datetime", datetime_precision=0),
    )
    assert ts.inexact == "timestamps compared at 0 fractional digits"
    other = plan_column(pg("c", "point"), my("c", "point"))
    assert other.inexact == "point vs point compared as text"
    assert plan_column(pg("c", "integer", "int4"), my("c", "int")).inexact is None


@pytest.mark.parametrize(
    ("value", "precision", "text"),
    [
        (dt.datetime(2024, 1, 1, 0, 0, 0, 999999), 0, "2024-01-01 00:00:01"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, 499999), 0, "2024-01-01 00:00:00"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, 123456), 3, "2024-01-01 00:00:00.123"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, 123500), 3, "2024-01-01 00:00:00.124"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, 5), 6, "2024-01-01 00:00:00.000005"),
        (dt.date(2024, 2, 29), 0, "2024-02-29 00:00:00"),
        (
            dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            0,
            "2024-01-01 00:00:00",
        ),
    ],
)
def test_timestamp_text(value: dt.datetime, precision: int, text: str) -> None:
    assert timestamp_text(value, precision) == text


def test_time_text() -> None:
    assert time_text(dt.timedelta(hours=1, microseconds=5), 6) == "01:00:00.000005"
    assert time_text(dt.time(23, 59, 59, 600000), 0) == "24:00:00"  # as MySQL rounds TIME
    assert time_text(dt.time(1, 2, 3, 450000), 1) == "01:02:03.5"


def test_row_text_null_empty_and_separators_cannot_collide() -> None:
    safe = [False, False]
    rows = [
        [None, "x"],
        ["", "x"],
        ["NULL", "x"],
        ["N", "x"],
        ["a|", "b"],
        ["a", "|b"],
        ["1:a", ""],
        ["", "1:a"],
        ["a|1:b", None],
    ]
    texts = [row_text(r, safe) for r in rows]
    assert len(set(texts)) == len(rows)
    # safe columns (numbers, dates) never contain '|' nor equal 'N': no prefix needed
    assert row_text(["1", None], [True, True]) == "1|N|"
    assert row_text(["é"], [False]) == "2:é|"  # byte length, as octet_length/LENGTH
