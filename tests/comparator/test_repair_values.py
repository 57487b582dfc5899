"""Values crossing engines and kept in the undo file, as tables (no server)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest

from comparator._repair_values import decode, encode, same_key, to_store
from comparator._schema_types import TypeSpec

UTC = dt.UTC
U = uuid.UUID("12345678-1234-5678-1234-567812345678")
NAIVE = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
AWARE = NAIVE.replace(tzinfo=UTC)

BOOL = TypeSpec("bool")
UUID = TypeSpec("uuid")
CHAR36 = TypeSpec("string", size=36, fixed=True)
BIN16 = TypeSpec("binary", size=16, fixed=True)
TS = TypeSpec("timestamp", scale=6)
TSTZ = TypeSpec("timestamp", scale=6, tz=True)
JSON = TypeSpec("json")
TIME = TypeSpec("time", scale=6)
DEC = TypeSpec("decimal", size=10, scale=2)

# (value as read from one engine, target column, target engine, value to write)
CONVERSIONS: list[tuple[Any, TypeSpec, str, Any]] = [
    (1, BOOL, "postgresql", True),
    (0, BOOL, "postgresql", False),
    (True, BOOL, "mysql", 1),
    (b"\x01", BOOL, "postgresql", True),  # bit(1)
    (str(U), UUID, "postgresql", U),
    (U.bytes, UUID, "postgresql", U),
    (U, CHAR36, "mysql", str(U)),
    (U, BIN16, "mysql", U.bytes),
    (U, UUID, "mysql", str(U)),
    (NAIVE, TSTZ, "postgresql", AWARE),
    (AWARE, TS, "mysql", NAIVE),
    (AWARE, TSTZ, "mysql", NAIVE),  # MariaDB TIMESTAMP travels naive in UTC
    (AWARE.astimezone(dt.timezone(dt.timedelta(hours=2))), TS, "postgresql", NAIVE),
    (dt.timedelta(hours=13, minutes=5, microseconds=7), TIME, "postgresql", dt.time(13, 5, 0, 7)),
    ('{"a": 1}', JSON, "postgresql", '{"a": 1}'),
    ({"a": 1}, JSON, "mysql", '{"a":1}'),
    ("1.50", DEC, "postgresql", Decimal("1.50")),
    (b"caf\xc3\xa9", TypeSpec("string", size=10), "postgresql", "café"),
    ("abc", TypeSpec("binary", size=100), "postgresql", b"abc"),
    (None, BOOL, "postgresql", None),
]


@pytest.mark.parametrize("value, spec, engine, expected", CONVERSIONS)
def test_to_store(value: Any, spec: TypeSpec, engine: str, expected: Any) -> None:
    converted = to_store(value, spec, engine)
    assert converted == expected and type(converted) is type(expected)


# Pairs that are one value spelled by two engines, and pairs that are not.
SAME = [
    ("ab  ", "ab", TypeSpec("string", size=4, fixed=True)),
    (1, True, BOOL),
    (Decimal("1.50"), Decimal("1.5"), DEC),
    (Decimal("-0.00"), Decimal("0"), DEC),
    ('{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}', JSON),
    (str(U), U, UUID),
    (NAIVE, AWARE, TSTZ),
    (dt.timedelta(hours=1), dt.time(1), TIME),
    (1.100000023841858, 1.1, TypeSpec("float", size=24)),
]
DIFFERENT = [
    ("ab", "ab ", TypeSpec("string", size=10)),  # varchar keeps trailing spaces
    ("", None, TypeSpec("string", size=10)),
    ("NULL", None, TypeSpec("string", size=10)),
    ('{"a": 1}', '{"a": 2}', JSON),
    (Decimal("1.5"), Decimal("1.51"), DEC),
]


@pytest.mark.parametrize("a, b, spec", SAME)
def test_same_value_across_engines(a: Any, b: Any, spec: TypeSpec) -> None:
    assert same_key(a, spec) == same_key(b, spec)
    assert hash(same_key(a, spec)) == hash(same_key(b, spec))


@pytest.mark.parametrize("a, b, spec", DIFFERENT)
def test_different_values_stay_different(a: Any, b: Any, spec: TypeSpec) -> None:
    assert same_key(a, spec) != same_key(b, spec)


def test_undo_file_values_round_trip_with_their_types() -> None:
    values = [
        None,
        True,
        7,
        -1.5,
        float("inf"),
        "text",
        b"\x00\xff",
        Decimal("12.3400"),
        NAIVE,
        AWARE,
        dt.date(2024, 1, 2),
        dt.time(3, 4, 5, 6),
        dt.timedelta(days=-1, seconds=5),
        U,
        [1, "a"],
    ]
    back = decode(orjson.loads(orjson.dumps(encode(values))))
    assert back == values
    assert [type(v) for v in back] == [type(v) for v in values]
    with pytest.raises(TypeError):
        encode(object())
