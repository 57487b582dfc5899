"""Column types and defaults across engines: parse, map, grade.

Every catalog type is parsed into a ``TypeSpec`` (a family and its capacity:
integer bits, string length, decimal precision, time precision, enum labels).
Two types are then graded by whether every value of the old column fits the
new one:

- ``None``: equivalent — the same type on one engine, or the documented
  mapping across engines (``tinyint(1)``→``boolean``, ``datetime``→``timestamp``,
  ``char(36)``/``binary(16)``→``uuid``, ``decimal(p,s)``→``numeric(p,s)``...);
- ``low``: every value fits but the type differs (``varchar(50)``→``text``,
  ``json``→``jsonb``, ``enum``→``text``, ``int``→``bigint``);
- ``medium``: values fit but their meaning may shift (naive ↔ time-zone aware
  timestamps, a boolean widened to an integer);
- ``high``: some values of the old column do not fit (narrowing);
- ``critical``: the families are unrelated (``text``→``integer``).

Defaults are compared as normalized text: casts, quoting and spelling
(``now()``, ``current_timestamp(3)``) removed; serial, identity and
auto_increment all read ``autoincrement``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from comparator._schema_catalog import ColumnInfo

Severity = str  # "critical" | "high" | "medium" | "low"
SEVERITIES = ("critical", "high", "medium", "low")

# PostgreSQL text, unbounded varchar and bytea hold at most 1 GB.
_UNLIMITED = 1 << 30


@dataclass(frozen=True, slots=True)
class TypeSpec:
    family: str  # bool int decimal float string binary date time timestamp json uuid enum other
    size: int = 0  # int: value bits (sign excluded); string/binary: max length; decimal: precision
    scale: int = 0  # decimal scale; time/timestamp fractional digits
    fixed: bool = False  # char(n)/binary(n): padded to n
    tz: bool = False  # timestamp with time zone semantics
    binary_json: bool = False  # jsonb
    labels: tuple[str, ...] = ()
    text: str = ""  # canonical spelling, for messages and for the "other" family


_MY_INT_BITS = {
    "tinyint": 7,
    "smallint": 15,
    "mediumint": 23,
    "int": 31,
    "integer": 31,
    "bigint": 63,
}
_PG_INT_BITS = {"smallint": 15, "integer": 31, "bigint": 63}
_MY_TEXT = {"tinytext": 255, "text": 65535, "mediumtext": 16777215, "longtext": 4294967295}
_MY_BLOB = {"tinyblob": 255, "blob": 65535, "mediumblob": 16777215, "longblob": 4294967295}
_ARGS = re.compile(r"^([a-z]+(?: precision)?)\s*(?:\(([^)]*)\))?\s*(.*)$")


def _split(type_text: str) -> tuple[str, list[int], str]:
    m = _ARGS.match(type_text.strip().lower())
    if not m:
        return type_text.lower(), [], ""
    args = [int(a) for a in (m.group(2) or "").split(",") if a.strip().isdigit()]
    return m.group(1).strip(), args, m.group(3).strip()


def parse_mysql(col: ColumnInfo) -> TypeSpec:
    text = col.type.lower()
    base, args, rest = _split(text)
    if col.is_json or base == "json":  # MariaDB: longtext + check; MySQL: a type
        return TypeSpec("json", text="json")
    if base == "enum":
        return TypeSpec("enum", labels=col.enum_labels, text=text)
    if (base == "tinyint" and args == [1]) or (base == "bit" and args in ([], [1])):
        return TypeSpec("bool", text=text)
    if base in _MY_INT_BITS:
        bits = _MY_INT_BITS[base] + (1 if "unsigned" in rest else 0)
        return TypeSpec("int", size=bits, text=f"{base} {rest}".strip())
    if base == "year":
        return TypeSpec("int", size=15, text=text)
    if base in ("decimal", "numeric"):
        p, s = (args + [10, 0])[:2] if args else (10, 0)
        return TypeSpec("decimal", size=p, scale=s, text=f"decimal({p},{s})")
    if base in ("float", "double", "real", "double precision"):
        return TypeSpec("float", size=24 if base == "float" else 53, text=base)
    if base in ("char", "varchar"):
        n = args[0] if args else 1
        return TypeSpec("string", size=n, fixed=base == "char", text=f"{base}({n})")
    if base in _MY_TEXT:
        return TypeSpec("string", size=_MY_TEXT[base], text=base)
    if base in ("binary", "varbinary"):
        n = args[0] if args else 1
        return TypeSpec("binary", size=n, fixed=base == "binary", text=f"{base}({n})")
    if base in _MY_BLOB:
        return TypeSpec("binary", size=_MY_BLOB[base], text=base)
    if base in ("date", "time", "datetime", "timestamp"):
        family = "timestamp" if base in ("datetime", "timestamp") else base
        return TypeSpec(family, scale=args[0] if args else 0, tz=base == "timestamp", text=text)
    if base == "uuid":
        return TypeSpec("uuid", text="uuid")
    return TypeSpec("other", text=text)


_PG_ALIASES = {
    "character varying": "varchar",
    "character": "char",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
    "time with time zone": "timetz",
}


def _pg_base(text: str) -> tuple[str, list[int]]:
    """``timestamp(3) with time zone`` -> ("timestamptz", [3])."""
    args = [int(a) for a in re.findall(r"\d+", "".join(re.findall(r"\([^)]*\)", text)))]
    base = re.sub(r"\([^)]*\)", "", text).strip()
    base = re.sub(r"\s+", " ", base)
    return _PG_ALIASES.get(base, base), args


def parse_pg(col: ColumnInfo) -> TypeSpec:
    text = col.type.lower()
    if col.enum_labels:
        return TypeSpec("enum", labels=col.enum_labels, text=text)
    base, args = _pg_base(text)
    canon = f"{base}({','.join(map(str, args))})" if args else base
    if text.endswith("[]"):
        return TypeSpec("other", text=canon)
    if base == "boolean":
        return TypeSpec("bool", text=canon)
    if base in _PG_INT_BITS:
        return TypeSpec("int", size=_PG_INT_BITS[base], text=canon)
    if base == "numeric":
        p, s = (args + [0])[:2] if args else (1000, 0)
        return TypeSpec("decimal", size=p, scale=s if args else 500, text=canon)
    if base in ("real", "double precision"):
        return TypeSpec("float", size=24 if base == "real" else 53, text=canon)
    if base in ("char", "varchar"):
        n = args[0] if args else (1 if base == "char" else _UNLIMITED)
        return TypeSpec("string", size=n, fixed=base == "char", text=canon)
    if base == "text":
        return TypeSpec("string", size=_UNLIMITED, text=canon)
    if base == "bytea":
        return TypeSpec("binary", size=_UNLIMITED, text=canon)
    if base in ("date", "time", "timestamp", "timestamptz", "timetz"):
        family = "timestamp" if base.startswith("timestamp") else base.replace("timetz", "time")
        return TypeSpec(family, scale=args[0] if args else 6, tz=base.endswith("tz"), text=canon)
    if base in ("json", "jsonb"):
        return TypeSpec("json", binary_json=base == "jsonb", text=canon)
    if base == "uuid":
        return TypeSpec("uuid", text=canon)
    return TypeSpec("other", text=canon)


def parse(engine: str, col: ColumnInfo) -> TypeSpec:
    return parse_pg(col) if engine == "postgresql" else parse_mysql(col)


# --------------------------------------------------------------------------- grading


def _fits(old: int, new: int) -> bool:
    # MariaDB's 4 GB long types never hold more than max_allowed_packet (at most
    # 1 GB), which is also PostgreSQL's limit: long types fit unbounded ones.
    return new >= min(old, _UNLIMITED)


def _grade_same_family(old: TypeSpec, new: TypeSpec, cross: bool) -> Severity | None:
    f = old.family
    if f in ("int", "float", "string", "binary"):
        if not _fits(old.size, new.size):
            return "high"
        if f in ("string", "binary") and old.fixed and not new.fixed and not cross:
            return "low"
        return None if cross and _canonical_target(old, new) else "low"
    if f == "decimal":
        fits = new.size - new.scale >= old.size - old.scale and new.scale >= old.scale
        if not fits:
            return "high"
        return None if (new.size, new.scale) == (old.size, old.scale) else "low"
    if f in ("time", "timestamp"):
        if new.scale < old.scale:
            return "high"
        if old.tz != new.tz:
            return "medium"
        return None if cross or new.scale == old.scale else "low"
    if f == "enum":
        if old.labels == new.labels:
            return None
        return "low" if set(old.labels) <= set(new.labels) else "high"
    if f == "json":
        return None if old.binary_json == new.binary_json else "low"
    if f in ("bool", "uuid", "date"):
        return None
    return None if old.text == new.text else "high"


def _canonical_target(old: TypeSpec, new: TypeSpec) -> bool:
    """Is ``new`` what the mapping across engines gives for ``old``?"""
    if old.family == "int":
        # PostgreSQL has no 8- or 24-bit integers: the smallest that holds the values.
        wanted = next((b for b in (15, 31, 63) if b >= old.size), 63)
        return new.size in (wanted, old.size)
    if old.family == "string":
        same_length = new.size == old.size and new.fixed == old.fixed
        both_texts = (
            old.size >= 255 and not old.fixed and _fits(old.size, new.size) and not new.fixed
        )
        # varchar(n) -> text is allowed but reported (the length check is lost).
        return same_length or (both_texts and old.text.endswith("text"))
    if old.family == "binary":
        return True  # every binary flavour maps to bytea and back
    return old.size == new.size


def grade_types(old: TypeSpec, new: TypeSpec, cross: bool) -> Severity | None:
    """How far ``new`` is from holding exactly what ``old`` holds (see module doc)."""
    if old == new:
        return None
    if old.family == new.family:
        return _grade_same_family(old, new, cross)
    pair = (old.family, new.family)
    if pair in (("string", "uuid"), ("binary", "uuid")):
        # char(36) / binary(16) holding UUIDs: the mapping's own choice.
        width = 36 if old.family == "string" else 16
        if old.size != width:
            return "high"
        return None if old.fixed else "low"
    if pair in (("uuid", "string"), ("uuid", "binary")):
        width = 36 if new.family == "string" else 16
        if new.size < width:
            return "high"
        return None if new.size == width else "low"
    if pair == ("enum", "string"):
        longest = max((len(x) for x in old.labels), default=0)
        return "low" if new.size >= longest else "high"
    if pair == ("string", "enum"):
        return "high"
    if pair == ("bool", "int"):
        return "medium"
    if pair == ("int", "bool"):
        return "high"
    if pair == ("int", "decimal"):
        digits = len(str(2**old.size))
        return "low" if new.size - new.scale >= digits else "high"
    if pair in (("int", "float"), ("decimal", "float"), ("float", "decimal")):
        return "high"
    if pair in (("json", "string"), ("string", "json")):
        return "medium" if new.size >= _UNLIMITED or new.family == "json" else "high"
    if pair in (("date", "timestamp"),):
        return "medium"
    return "critical"


# --------------------------------------------------------------------------- defaults

_CAST = re.compile(r"::[a-z_ ]+(?:\([^)]*\))?(?:\[\])?", re.IGNORECASE)
_NOW = re.compile(
    r"^(now\(\)|current_timestamp(\(\d*\))?|localtimestamp(\(\d*\))?|"
    r"transaction_timestamp\(\)|statement_timestamp\(\))$",
    re.IGNORECASE,
)
_UUID_FUNCS = {"uuid()", "gen_random_uuid()", "uuid_generate_v4()"}


def normalize_default(col: ColumnInfo, spec: TypeSpec) -> str | None:
    """A default's text with the engines' spellings removed; None for no default."""
    if col.auto_increment:
        return "autoincrement"
    text = col.default
    if text is None:
        return None
    text = _CAST.sub("", text.strip())
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if text.upper() == "NULL":
        return None
    if _NOW.match(text):
        return "current_timestamp"
    if text.lower() in ("current_date", "curdate()"):
        return "current_date"
    if text.lower() in _UUID_FUNCS:
        return "uuid()"
    literal = _unquote(text)
    if literal is None:
        return text.lower()  # an expression: compare as spelled
    return _literal(literal, spec)


def _unquote(text: str) -> str | None:
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        return text[1:-1].replace("''", "'").replace("\\'", "'")
    if re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?|true|false", text, re.IGNORECASE):
        return text
    return None


def _literal(value: str, spec: TypeSpec) -> str:
    if spec.family == "bool":
        lowered = value.lower()
        if lowered in ("1", "t", "true", "y", "yes", "on", "b'1'"):
            return "true"
        if lowered in ("0", "f", "false", "n", "no", "off", "b'0'"):
            return "false"
    if spec.family in ("int", "decimal", "float"):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return f"'{value}'"
        number = number.normalize()
        return "0" if number.is_zero() else format(number, "f")
    return f"'{value}'"
