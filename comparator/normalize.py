"""Per-type normalization across engines: one canonical text per value.

How this works: for every column pair (old column, new column) ``plan_column`` picks a
canonical text form and returns, for each side, the SQL expression that renders the
column in that form inside its own database, plus a Python function that renders a
value fetched by that side's driver the same way.  The database expressions feed the
pushed-down checksums (both engines must produce byte-identical strings for equal
values); the Python functions decide the final row diff, so a checksum that differs
only through a rounding edge never becomes a reported divergence.

How the column texts of a row are framed and hashed lives in ``comparator.rowhash``.

When both sides are the same engine and the same declared type, the native text
output is used (exact and cheapest).  Type pairs that cannot be compared exactly carry
an ``inexact`` note that the report prints.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

import orjson

from comparator.dsn import Engine

FLOAT_REL_TOL = 1e-12  # relative tolerance of the row diff for floats


class Family(StrEnum):
    INT = "int"
    BOOL = "bool"
    DECIMAL = "decimal"
    FLOAT = "float"
    TIMESTAMP = "timestamp"  # no time zone (datetime, timestamp without time zone)
    TIMESTAMPTZ = "timestamptz"  # an instant (MySQL TIMESTAMP, PostgreSQL timestamptz)
    DATE = "date"
    TIME = "time"
    TEXT = "text"
    CHAR = "char"
    BINARY = "binary"
    JSON = "json"
    UUID = "uuid"
    ENUM = "enum"
    OTHER = "other"


@dataclass(frozen=True)
class Column:
    """A column as the catalog describes it."""

    name: str
    engine: Engine
    type: str  # PostgreSQL format_type(); MySQL COLUMN_TYPE (lowercase)
    data_type: str  # PostgreSQL typname/udt; MySQL DATA_TYPE (lowercase)
    numeric_scale: int | None = None
    datetime_precision: int | None = None
    charset: str | None = None  # MySQL character set of text columns
    is_enum: bool = False


def family(col: Column) -> Family:
    """The comparison family of a column type."""
    t, d = col.type.lower(), col.data_type.lower()
    if col.is_enum or d == "enum":
        return Family.ENUM
    if col.engine == "mysql":
        return _mysql_family(t, d)
    return _pg_family(t, d)


_PG_FAMILIES = {
    "int2": Family.INT,
    "int4": Family.INT,
    "int8": Family.INT,
    "smallint": Family.INT,
    "integer": Family.INT,
    "bigint": Family.INT,
    "bool": Family.BOOL,
    "boolean": Family.BOOL,
    "numeric": Family.DECIMAL,
    "float4": Family.FLOAT,
    "float8": Family.FLOAT,
    "real": Family.FLOAT,
    "double precision": Family.FLOAT,
    "timestamp": Family.TIMESTAMP,
    "timestamptz": Family.TIMESTAMPTZ,
    "date": Family.DATE,
    "time": Family.TIME,
    "text": Family.TEXT,
    "varchar": Family.TEXT,
    "character varying": Family.TEXT,
    "name": Family.TEXT,
    "citext": Family.TEXT,
    "bpchar": Family.CHAR,
    "character": Family.CHAR,
    "bytea": Family.BINARY,
    "json": Family.JSON,
    "jsonb": Family.JSON,
    "uuid": Family.UUID,
}

_MYSQL_FAMILIES = {
    "tinyint": Family.INT,
    "smallint": Family.INT,
    "mediumint": Family.INT,
    "int": Family.INT,
    "integer": Family.INT,
    "bigint": Family.INT,
    "year": Family.INT,
    "decimal": Family.DECIMAL,
    "numeric": Family.DECIMAL,
    "float": Family.FLOAT,
    "double": Family.FLOAT,
    "datetime": Family.TIMESTAMP,
    "timestamp": Family.TIMESTAMPTZ,
    "date": Family.DATE,
    "time": Family.TIME,
    "varchar": Family.TEXT,
    "text": Family.TEXT,
    "tinytext": Family.TEXT,
    "mediumtext": Family.TEXT,
    "longtext": Family.TEXT,
    "set": Family.TEXT,
    "char": Family.CHAR,
    "binary": Family.BINARY,
    "varbinary": Family.BINARY,
    "blob": Family.BINARY,
    "tinyblob": Family.BINARY,
    "mediumblob": Family.BINARY,
    "longblob": Family.BINARY,
    "json": Family.JSON,
    "uuid": Family.UUID,
}


def _pg_family(t: str, d: str) -> Family:
    if t.startswith("timestamp"):
        return Family.TIMESTAMPTZ if "with time zone" in t else Family.TIMESTAMP
    if t.startswith("time"):
        return Family.TIME
    return _PG_FAMILIES.get(d, _PG_FAMILIES.get(t.split("(")[0], Family.OTHER))


def _mysql_family(t: str, d: str) -> Family:
    if t.startswith("tinyint(1)") or d in ("bool", "boolean"):
        return Family.BOOL
    return _MYSQL_FAMILIES.get(d, Family.OTHER)


# ----------------------------------------------------------------------------- plans

PyNorm = Callable[[Any], Any]


@dataclass(frozen=True)
class ColumnPlan:
    """How one column pair is compared."""

    name: str
    old_sql: str  # expression rendering the old column as canonical text (NULL stays NULL)
    new_sql: str
    old_py: PyNorm  # a fetched old value -> comparable canonical value (None for NULL)
    new_py: PyNorm
    inexact: str | None = None  # why this pair is not compared exactly
    float_tolerance: bool = False  # compare the Python values with FLOAT_REL_TOL
    # JSON across engines has no canonical SQL text: compared parsed, row by row.
    row_compare: bool = False
    # The canonical text never contains '|' and is never 'N' (numbers, dates, hex, uuids):
    # the row encoding then needs no length prefix for this column.
    safe: bool = False

    def equal(self, old_value: Any, new_value: Any) -> bool:
        a, b = self.old_py(old_value), self.new_py(new_value)
        if a is None or b is None:
            return a is None and b is None
        if self.float_tolerance:
            return bool(math.isclose(a, b, rel_tol=FLOAT_REL_TOL, abs_tol=1e-300))
        return bool(a == b)


def quote_ident(engine: Engine, name: str) -> str:
    if engine == "postgresql":
        return '"' + name.replace('"', '""') + '"'
    return "`" + name.replace("`", "``") + "`"


_SAFE = {
    Family.INT,
    Family.BOOL,
    Family.DECIMAL,
    Family.FLOAT,
    Family.TIMESTAMP,
    Family.TIMESTAMPTZ,
    Family.DATE,
    Family.TIME,
    Family.UUID,
}


def plan_column(old: Column, new: Column) -> ColumnPlan:
    """The comparison plan of one column present on both sides (same name)."""
    fo, fn = family(old), family(new)
    if old.engine == new.engine and old.type.lower() == new.type.lower():
        plan = _native_plan(old, fo)
        safe = fo in _SAFE or (fo is Family.BINARY and old.engine == "postgresql")
        return replace(plan, safe=safe)
    key = _pair(fo, fn)
    builder = _BUILDERS.get(key)
    if builder is None:
        return _text_plan(old, new, f"{old.type} vs {new.type} compared as text")
    plan = builder(old, new)
    safe = plan.row_compare or key <= _SAFE | {Family.BINARY}
    return replace(plan, safe=safe)


def _pair(a: Family, b: Family) -> frozenset[Family]:
    groups = {
        Family.INT: "num",
        Family.BOOL: "num",
        Family.DECIMAL: "dec",
        Family.FLOAT: "float",
        Family.TIMESTAMP: "ts",
        Family.TIMESTAMPTZ: "ts",
        Family.DATE: "ts",
        Family.TEXT: "text",
        Family.CHAR: "text",
        Family.ENUM: "text",
    }
    ga, gb = groups.get(a, a.value), groups.get(b, b.value)
    if {ga, gb} <= {"num", "dec"} and "dec" in (ga, gb):
        return frozenset({Family.DECIMAL})
    if {ga, gb} <= {"num", "dec", "float"} and "float" in (ga, gb):
        return frozenset({Family.FLOAT})
    if ga == gb == "num":
        return frozenset({Family.INT})
    if ga == gb == "ts":
        return frozenset({Family.TIMESTAMP})
    if ga == gb == "text":
        return frozenset({Family.TEXT})
    if ga == gb:
        return frozenset({a})
    if {a, b} == {Family.UUID, Family.TEXT} or {a, b} == {Family.UUID, Family.CHAR}:
        return frozenset({Family.UUID})
    if {a, b} == {Family.UUID, Family.BINARY}:
        return frozenset({Family.UUID})
    return frozenset({a, b})


def _native_plan(col: Column, fam: Family) -> ColumnPlan:
    """Same engine, same declared type: the engine's own text output is exact."""
    q = quote_ident(col.engine, col.name)
    if col.engine == "postgresql":
        sql = f"{q}::text"
    elif fam in (Family.TEXT, Family.CHAR, Family.ENUM) and _needs_convert(col):
        sql = f"CONVERT({q} USING utf8mb4)"
    else:
        sql = q
    py: PyNorm = _py_json if fam is Family.JSON else _identity
    return ColumnPlan(col.name, sql, sql, py, py)


def _identity(v: Any) -> Any:
    return v


def _needs_convert(col: Column) -> bool:
    return col.engine == "mysql" and (col.charset or "utf8mb4") not in ("utf8mb4", "binary")


def _text_plan(old: Column, new: Column, note: str | None) -> ColumnPlan:
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            return f"{q}::text"
        return f"CONVERT({q} USING utf8mb4)" if _needs_convert(col) else f"CAST({q} AS CHAR)"

    return ColumnPlan(old.name, sql(old), sql(new), _py_text, _py_text, inexact=note)


def _py_text(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


# ------------------------------------------------------------------ integers, decimals


def _int_plan(old: Column, new: Column) -> ColumnPlan:
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            return f"{q}::int::text" if family(col) is Family.BOOL else f"{q}::text"
        return q  # CONCAT renders integers as their decimal text

    return ColumnPlan(old.name, sql(old), sql(new), _py_int, _py_int)


def _py_int(v: Any) -> Any:
    return None if v is None else str(int(v))


def _scale(col: Column) -> int | None:
    if family(col) in (Family.INT, Family.BOOL):
        return 0
    return col.numeric_scale


def _decimal_plan(old: Column, new: Column) -> ColumnPlan:
    so, sn = _scale(old), _scale(new)
    known = [s for s in (so, sn) if s is not None]
    scale = max(known) if known else 10
    note = None
    if so is None or sn is None:
        note = f"numeric without a declared scale compared at scale {scale}"

    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        zero = "0." + "0" * scale if scale else "0"
        # A column already at the common scale prints canonically: no conversion (the
        # checksum is the hot path).  Otherwise rounding to the scale also makes -0 0.
        exact = _scale(col) == scale and family(col) is Family.DECIMAL
        if col.engine == "postgresql":
            if exact:
                return f"{q}::text"
            return f"CASE WHEN {q} = 0 THEN '{zero}' ELSE round({q}::numeric, {scale})::text END"
        if exact:
            return q
        return f"IF({q} = 0, '{zero}', CAST(CAST({q} AS DECIMAL(65,{scale})) AS CHAR))"

    def py(v: Any) -> Any:
        if v is None:
            return None
        d = Decimal(v).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
        return format(d if d != 0 else abs(d), "f")

    return ColumnPlan(old.name, sql(old), sql(new), py, py, inexact=note)


# ---------------------------------------------------------------------------- floats


def _float_plan(old: Column, new: Column) -> ColumnPlan:
    # Both engines print a double as its shortest round-trip decimal; only the exponent
    # spelling differs ('1e+20' vs '1e20'), which the PostgreSQL side rewrites.  Rare
    # formats that still differ (tiny magnitudes) only cost a download: the row diff
    # compares the values with a relative tolerance and finds them equal.
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        # -0 prints as '-0' on PostgreSQL: zero is written '0' on both.
        if col.engine == "postgresql":
            return f"CASE WHEN {q} = 0 THEN '0' ELSE replace({q}::float8::text, 'e+', 'e') END"
        return f"IF({q} = 0, '0', {q if col.data_type == 'double' else f'CAST({q} AS DOUBLE)'})"

    note = f"float compared with relative tolerance {FLOAT_REL_TOL:g}"
    # A single-precision side: drivers disagree on how they widen it (MariaDB sends
    # its shortest text, PostgreSQL the exact float4): compare both at float4.
    single = any(_single(c) for c in (old, new))
    py = _py_float4 if single else _py_float
    return ColumnPlan(old.name, sql(old), sql(new), py, py, inexact=note, float_tolerance=True)


def _single(col: Column) -> bool:
    return col.data_type in ("float4", "real") or (
        col.engine == "mysql" and col.data_type == "float"
    )


def _py_float4(v: Any) -> Any:
    return None if v is None else struct.unpack("f", struct.pack("f", float(v)))[0]


def _py_float(v: Any) -> Any:
    return None if v is None else float(v)


# ------------------------------------------------------------------- date and time


def _precision(col: Column) -> int:
    fam = family(col)
    if fam is Family.DATE:
        return 0
    if col.datetime_precision is None:
        return 6 if col.engine == "postgresql" else 0
    return max(0, min(6, col.datetime_precision))


def _timestamp_plan(old: Column, new: Column) -> ColumnPlan:
    po, pn = _precision(old), _precision(new)
    p = min(po, pn)
    fams = {family(old), family(new)}
    notes = []
    if po != pn:
        notes.append(f"timestamps compared at {p} fractional digits")
    if fams == {Family.TIMESTAMP, Family.TIMESTAMPTZ}:
        notes.append("timestamp without time zone taken as UTC")
    if Family.DATE in fams and len(fams) > 1:
        notes.append("date compared as midnight")
    if fams == {Family.DATE}:
        return _date_plan(old, new)

    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            x = f"({q} AT TIME ZONE 'UTC')" if family(col) is Family.TIMESTAMPTZ else q
            return pg_timestamp_sql(f"{x}::timestamp({p})", p)
        # MySQL TIMESTAMP values are shown in the session time zone: sessions use UTC.
        # At the common precision the column's own text is the canonical one.
        if family(col) is not Family.DATE and _precision(col) == p:
            return q
        if p == 0:
            return f"DATE_FORMAT(CAST({q} AS DATETIME(0)), '%Y-%m-%d %H:%i:%s')"
        return f"LEFT(DATE_FORMAT(CAST({q} AS DATETIME({p})), '%Y-%m-%d %H:%i:%s.%f'), {20 + p})"

    def py(v: Any) -> Any:
        return None if v is None else timestamp_text(v, p)

    return ColumnPlan(old.name, sql(old), sql(new), py, py, inexact="; ".join(notes) or None)


def pg_timestamp_sql(ts: str, precision: int) -> str:
    """A PostgreSQL timestamp (already rounded to ``precision``) as MariaDB prints it.

    The ISO text output (the comparator's sessions set DateStyle ISO) drops trailing
    fractional zeros ('12:00:00.5'); overlaying it on a zero template restores exactly
    ``precision`` digits, measured ~40 % cheaper than to_char, which interprets its
    pattern on every row.  Other texts (years past 9999, BC, infinity) come out unlike
    any in-range timestamp's, so distinct values keep distinct texts.
    """
    template = "0000-00-00 00:00:00" + ("." + "0" * precision if precision else "")
    return f"overlay('{template}' placing {ts}::text from 1)"


def timestamp_text(v: dt.datetime | dt.date, precision: int) -> str:
    """A timestamp as UTC text, rounded (half up, as both engines do) to ``precision``."""
    if not isinstance(v, dt.datetime):
        v = dt.datetime(v.year, v.month, v.day)
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    unit = 10 ** (6 - precision)
    micro = (v.microsecond + unit // 2) // unit * unit
    v = v.replace(microsecond=0) + dt.timedelta(microseconds=micro)
    # Not strftime: its %Y drops the zero padding of years below 1000 on glibc.
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v:%H:%M:%S}"
    return text if precision == 0 else f"{text}.{v.microsecond:06d}"[: 20 + precision]


def _date_plan(old: Column, new: Column) -> ColumnPlan:
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        return f"{q}::text" if col.engine == "postgresql" else q  # ISO on both

    def py(v: Any) -> Any:
        return None if v is None else f"{v.year:04d}-{v.month:02d}-{v.day:02d}"

    return ColumnPlan(old.name, sql(old), sql(new), py, py)


def _time_plan(old: Column, new: Column) -> ColumnPlan:
    po, pn = _precision(old), _precision(new)
    p = min(po, pn)
    note = f"times compared at {p} fractional digits" if po != pn else None

    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            x = f"to_char('2000-01-01'::date + {q}::time({p}), 'HH24:MI:SS.US')"
        else:
            x = f"TIME_FORMAT(CAST({q} AS TIME({p})), '%H:%i:%s.%f')"
        return f"left({x}, {8 if p == 0 else 9 + p})"

    def py(v: Any) -> Any:
        return None if v is None else time_text(v, p)

    return ColumnPlan(old.name, sql(old), sql(new), py, py, inexact=note)


def time_text(v: dt.time | dt.timedelta, precision: int) -> str:
    """A time of day (aiomysql returns TIME as a timedelta) rounded to ``precision``."""
    if isinstance(v, dt.timedelta):
        micros = v.days * 86_400_000_000 + v.seconds * 1_000_000 + v.microseconds
    else:
        micros = ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    unit = 10 ** (6 - precision)
    micros = (micros + unit // 2) // unit * unit
    secs, frac = divmod(micros, 1_000_000)
    text = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return text if precision == 0 else f"{text}.{frac:06d}"[: 9 + precision]


# ---------------------------------------------------------- text, binary, json, uuid


def _text_family_plan(old: Column, new: Column) -> ColumnPlan:
    padded = Family.CHAR in (family(old), family(new))

    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            x = f"{q}::text"  # char(n)::text already drops the padding
            return f"rtrim({x}, ' ')" if padded and family(col) is not Family.CHAR else x
        x = f"CONVERT({q} USING utf8mb4)" if _needs_convert(col) else q
        # MySQL already strips CHAR padding on read; a VARCHAR beside a CHAR is trimmed.
        return f"TRIM(TRAILING ' ' FROM {x})" if padded and family(col) is not Family.CHAR else x

    def py(v: Any) -> Any:
        s = _py_text(v)
        return s.rstrip(" ") if padded and s is not None else s

    note = "trailing spaces ignored (char padding)" if padded else None
    return ColumnPlan(old.name, sql(old), sql(new), py, py, inexact=note)


def _binary_plan(old: Column, new: Column) -> ColumnPlan:
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        return f"encode({q}, 'hex')" if col.engine == "postgresql" else f"LOWER(HEX({q}))"

    def py(v: Any) -> Any:
        return None if v is None else bytes(v).hex()

    return ColumnPlan(old.name, sql(old), sql(new), py, py)


def _json_plan(old: Column, new: Column) -> ColumnPlan:
    # No SQL text is canonical on both engines (key order, spacing): the checksum only
    # sees NULL or not, and rows are downloaded and compared parsed.
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        return f"CASE WHEN {q} IS NULL THEN NULL ELSE 'j' END"

    return ColumnPlan(
        old.name,
        sql(old),
        sql(new),
        _py_json,
        _py_json,
        inexact="json compared parsed, row by row",
        row_compare=True,
    )


def _py_json(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str | bytes | bytearray):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            return v
    return v


def _uuid_plan(old: Column, new: Column) -> ColumnPlan:
    def sql(col: Column) -> str:
        q = quote_ident(col.engine, col.name)
        if col.engine == "postgresql":
            return f"{q}::text"
        if family(col) is Family.BINARY:
            h = f"LOWER(HEX({q}))"
            return (
                f"CONCAT(SUBSTR({h},1,8),'-',SUBSTR({h},9,4),'-',SUBSTR({h},13,4),'-',"
                f"SUBSTR({h},17,4),'-',SUBSTR({h},21,12))"
            )
        return f"LOWER(CAST({q} AS CHAR))"

    return ColumnPlan(old.name, sql(old), sql(new), _py_uuid, _py_uuid)


def _py_uuid(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray) and len(v) == 16:
        return str(uuid.UUID(bytes=bytes(v)))
    try:
        return str(uuid.UUID(str(v)))
    except ValueError:
        return str(v).lower()


_BUILDERS: dict[frozenset[Family], Callable[[Column, Column], ColumnPlan]] = {
    frozenset({Family.INT}): _int_plan,
    frozenset({Family.DECIMAL}): _decimal_plan,
    frozenset({Family.FLOAT}): _float_plan,
    frozenset({Family.TIMESTAMP}): _timestamp_plan,
    frozenset({Family.TIME}): _time_plan,
    frozenset({Family.TEXT}): _text_family_plan,
    frozenset({Family.BINARY}): _binary_plan,
    frozenset({Family.JSON}): _json_plan,
    frozenset({Family.UUID}): _uuid_plan,
}
