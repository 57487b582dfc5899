"""Values on their way between stores: convert, compare, and keep in an undo file.

``to_store`` turns a value read from either engine into what the target
column's driver expects (asyncpg is strict about Python types; aiomysql
escapes what it is given): ``tinyint(1)`` ↔ ``bool``, ``char(36)``/``binary(16)``
↔ ``UUID``, naive ↔ aware timestamps (naive values are UTC: both connections
run in UTC), MariaDB's ``TIME`` as ``timedelta`` ↔ ``time``, JSON as text.

``same_key`` gives a hashable form under which the two engines' spellings
of one value are equal (``'ab'`` and PostgreSQL's padded ``'ab  '`` for
``char(4)``; ``1`` and ``True``), used to match rows across stores.

``encode``/``decode`` keep values in the undo file without losing their type
(JSON has no bytes, decimals or timestamps).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import orjson

from comparator._schema_types import TypeSpec

UTC = dt.UTC


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return str(value)


def _to_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes | bytearray) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(_text(value).strip())


def _to_bool(value: Any) -> bool:
    if isinstance(value, bytes | bytearray):  # bit(1)
        return any(value)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return bool(value)


def _to_time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, dt.timedelta):  # MariaDB TIME; times of day only
        return (dt.datetime.min + value).time()
    return dt.time.fromisoformat(_text(value))


def _to_timestamp(value: Any, aware: bool) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromisoformat(_text(value))
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=UTC) if aware else value.replace(tzinfo=None)


def _to_json_text(value: Any) -> str:
    if isinstance(value, str | bytes | bytearray):
        return _text(value)
    return orjson.dumps(value).decode()


def to_store(value: Any, spec: TypeSpec, engine: str) -> Any:
    """``value`` as a parameter for a column of type ``spec`` on ``engine``."""
    if value is None:
        return None
    family, pg = spec.family, engine == "postgresql"
    if family == "bool":
        return _to_bool(value) if pg else int(_to_bool(value))
    if family == "int":
        return int(value)
    if family == "decimal":
        return value if isinstance(value, Decimal) else Decimal(_text(value))
    if family == "float":
        return float(value)
    if family == "uuid":
        return _to_uuid(value) if pg else str(_to_uuid(value))
    if family == "binary":
        if isinstance(value, uuid.UUID):
            return value.bytes if spec.size == 16 else str(value).encode()
        return bytes(value) if not isinstance(value, str) else value.encode()
    if family in ("string", "enum"):
        if isinstance(value, uuid.UUID):
            return str(value)
        return _text(value)
    if family == "json":
        return _to_json_text(value)
    if family == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(_text(value))
    if family == "time":
        return _to_time(value)
    if family == "timestamp":
        # MariaDB TIMESTAMP is read and written naive in UTC (the session runs in UTC).
        return _to_timestamp(value, aware=pg and spec.tz)
    return value


def same_key(value: Any, spec: TypeSpec) -> Any:
    """A hashable form equal for equal values whichever engine they came from."""
    if value is None:
        return None
    family = spec.family
    if family == "bool":
        return _to_bool(value)
    if family == "int":
        return int(value)
    if family == "decimal":
        return Decimal(_text(value)).normalize() + 0  # + 0 turns -0 into 0
    if family == "float":
        number = float(value)
        # real values cross the engines at single precision: compare at what it holds.
        return (
            number
            if not math.isfinite(number)
            else float(f"{number:.{6 if spec.size == 24 else 15}g}")
        )
    if family == "uuid" or (family in ("string", "binary") and isinstance(value, uuid.UUID)):
        return _to_uuid(value)
    if family in ("string", "enum"):
        text = _text(value)
        return text.rstrip(" ") if spec.fixed else text
    if family == "binary":
        data = value.encode() if isinstance(value, str) else bytes(value)
        return data.rstrip(b"\0") if spec.fixed else data
    if family == "json":
        return orjson.dumps(orjson.loads(_to_json_text(value)), option=orjson.OPT_SORT_KEYS)
    if family == "date":
        return to_store(value, spec, "postgresql")
    if family == "time":
        return _to_time(value)
    if family == "timestamp":
        return _to_timestamp(value, aware=True)
    if isinstance(value, list):
        return tuple(value)
    return value


# --------------------------------------------------------------------------- undo file values


def encode(value: Any) -> Any:
    """A JSON-safe form of a driver value that ``decode`` turns back into it."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$f": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, dt.datetime):
        return {"$ts": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$t": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    raise TypeError(f"cannot keep a {type(value).__name__} in the undo file")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, raw),) = value.items()
    if tag == "$f":
        return float(raw)
    if tag == "$b":
        return base64.b64decode(raw)
    if tag == "$d":
        return Decimal(raw)
    if tag == "$ts":
        return dt.datetime.fromisoformat(raw)
    if tag == "$date":
        return dt.date.fromisoformat(raw)
    if tag == "$t":
        return dt.time.fromisoformat(raw)
    if tag == "$td":
        return dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])
    if tag == "$u":
        return uuid.UUID(raw)
    raise ValueError(f"unknown value tag {tag!r} in the undo file")
