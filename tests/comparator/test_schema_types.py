"""The type mapping across engines and default normalization, as tables (no server)."""

from __future__ import annotations

import pytest

from comparator._schema_catalog import ColumnInfo
from comparator._schema_types import grade_types, normalize_default, parse


def col(type_: str, default: str | None = None, **kw: object) -> ColumnInfo:
    return ColumnInfo("c", 1, type_, True, default, **kw)  # type: ignore[arg-type]


MY, PG = "mysql", "postgresql"

# (old engine, old type, new engine, new type, severity); None = equivalent
TYPES = [
    (MY, "tinyint(1)", PG, "boolean", None),
    (MY, "int(11)", PG, "integer", None),
    (MY, "int(10) unsigned", PG, "bigint", None),
    (MY, "int(11)", PG, "bigint", "low"),
    (MY, "bigint(20)", PG, "bigint", None),
    (MY, "bigint(20) unsigned", PG, "bigint", "high"),
    (MY, "bigint(20) unsigned", PG, "numeric(20,0)", "low"),
    (MY, "tinyint(4)", PG, "smallint", None),
    (MY, "mediumint(9)", PG, "integer", None),
    (MY, "varchar(40)", PG, "character varying(40)", None),
    (MY, "varchar(40)", PG, "text", "low"),
    (MY, "varchar(40)", PG, "character varying(20)", "high"),
    (MY, "char(3)", PG, "character(3)", None),
    (MY, "longtext", PG, "text", None),
    (MY, "datetime", PG, "timestamp without time zone", None),
    (MY, "datetime(6)", PG, "timestamp(3) without time zone", "high"),
    (MY, "datetime", PG, "timestamp with time zone", "medium"),
    (MY, "timestamp", PG, "timestamp with time zone", None),
    (MY, "blob", PG, "bytea", None),
    (MY, "varbinary(16)", PG, "bytea", None),
    (MY, "char(36)", PG, "uuid", None),
    (MY, "binary(16)", PG, "uuid", None),
    (MY, "char(10)", PG, "uuid", "high"),
    (MY, "char(16)", PG, "uuid", "high"),
    (MY, "varchar(36)", PG, "uuid", "low"),
    (PG, "uuid", MY, "binary(16)", None),
    (PG, "uuid", MY, "varchar(64)", "low"),
    (PG, "uuid", MY, "char(16)", "high"),
    (MY, "decimal(10,2)", PG, "numeric(10,2)", None),
    (MY, "decimal(10,2)", PG, "numeric(12,4)", "low"),
    (MY, "decimal(10,2)", PG, "numeric(10,1)", "high"),
    (MY, "double", PG, "double precision", None),
    (MY, "double", PG, "real", "high"),
    (MY, "float", PG, "real", None),
    (MY, "time", PG, "time without time zone", None),
    (MY, "date", PG, "date", None),
    (MY, "varchar(10)", PG, "integer", "critical"),
    (MY, "int(11)", PG, "text", "critical"),
    (PG, "text", MY, "longtext", None),
    (PG, "bytea", MY, "longblob", None),
    (PG, "bytea", MY, "blob", "high"),
    (PG, "uuid", MY, "char(36)", None),
    (PG, "boolean", MY, "tinyint(1)", None),
    (PG, "integer", PG, "integer", None),
    (PG, "integer", PG, "bigint", "low"),
    (PG, "bigint", PG, "integer", "high"),
    (PG, "json", PG, "jsonb", "low"),
    (PG, "timestamp without time zone", PG, "timestamp with time zone", "medium"),
    (MY, "int(11)", MY, "int(11)", None),
    (MY, "varchar(10)", MY, "varchar(20)", "low"),
]


@pytest.mark.parametrize("old_engine, old_type, new_engine, new_type, severity", TYPES)
def test_type_grades(
    old_engine: str, old_type: str, new_engine: str, new_type: str, severity: str | None
) -> None:
    old, new = parse(old_engine, col(old_type)), parse(new_engine, col(new_type))
    assert grade_types(old, new, old_engine != new_engine) == severity


def test_json_and_enums() -> None:
    my_json = parse(MY, col("longtext", is_json=True))
    assert grade_types(my_json, parse(PG, col("json")), True) is None
    assert grade_types(my_json, parse(PG, col("jsonb")), True) == "low"
    my_enum = parse(MY, col("enum('a','b')", enum_labels=("a", "b")))
    pg_enum = parse(PG, col("mood", enum_labels=("a", "b")))
    assert grade_types(my_enum, pg_enum, True) is None
    assert grade_types(my_enum, parse(PG, col("text")), True) == "low"
    assert grade_types(my_enum, parse(PG, col("character varying(1)")), True) == "low"
    fewer = parse(PG, col("mood", enum_labels=("a",)))
    assert grade_types(my_enum, fewer, True) == "high"


# (engine, type, default text as the catalog shows it, normalized)
DEFAULTS = [
    (PG, "character varying(10)", "'x'::character varying", "'x'"),
    (MY, "varchar(10)", "'x'", "'x'"),
    (PG, "text", "'it''s'::text", "'it's'"),
    (MY, "text", "'it''s'", "'it's'"),
    (PG, "numeric(10,2)", "0.00", "0"),
    (MY, "decimal(10,2)", "0.00", "0"),
    (PG, "numeric(10,2)", "'1.50'::numeric", "1.5"),
    (PG, "boolean", "true", "true"),
    (MY, "tinyint(1)", "1", "true"),
    (PG, "timestamp with time zone", "now()", "current_timestamp"),
    (PG, "timestamp with time zone", "CURRENT_TIMESTAMP", "current_timestamp"),
    (MY, "timestamp", "current_timestamp()", "current_timestamp"),
    (MY, "datetime(3)", "current_timestamp(3)", "current_timestamp"),
    (PG, "uuid", "gen_random_uuid()", "uuid()"),
    (MY, "char(36)", "uuid()", "uuid()"),
    (PG, "text", "NULL::text", None),
    (PG, "integer", "(-1)", "-1"),
    (PG, "integer", None, None),
]


@pytest.mark.parametrize("engine, type_, default, expected", DEFAULTS)
def test_default_normalization(
    engine: str, type_: str, default: str | None, expected: str | None
) -> None:
    column = col(type_, default)
    assert normalize_default(column, parse(engine, column)) == expected


def test_serial_identity_and_auto_increment_are_one_default() -> None:
    pg_serial = col("integer", "nextval('t_id_seq'::regclass)", auto_increment=True)
    my_auto = col("int(11)", None, auto_increment=True)
    assert normalize_default(pg_serial, parse(PG, pg_serial)) == "autoincrement"
    assert normalize_default(my_auto, parse(MY, my_auto)) == "autoincrement"
