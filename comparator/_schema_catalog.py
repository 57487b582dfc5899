"""What the catalogs say about a store's tables: columns, keys and indexes.

One reader per engine fills the same engine-neutral ``TableInfo``: PostgreSQL
from ``information_schema`` for the table list and ``pg_catalog`` for the rest
(``format_type`` gives exact types with their modifiers, ``pg_index`` gives
index key columns and expressions); MariaDB/MySQL from ``information_schema``
only.  Types are kept as the catalog spells them (``TableInfo`` is data; the
comparison and the mapping across engines live in ``_schema_types``).

Repair and schema parity both read through here, so a column the parity check
sees is the column repair writes.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import asyncpg
import pymysql.converters

from comparator.dsn import StoreDsn


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    position: int
    type: str  # as the catalog spells it: "character varying(20)", "tinyint(1)"
    nullable: bool
    default: str | None  # the default expression's text, None when there is none
    auto_increment: bool = False  # serial/identity/auto_increment
    identity_always: bool = False  # PostgreSQL GENERATED ALWAYS AS IDENTITY
    generated: bool = False  # computed column: never written
    enum_labels: tuple[str, ...] = ()
    is_json: bool = False  # MariaDB json is longtext + CHECK (json_valid(col))
    on_update: str | None = None  # MariaDB ON UPDATE current_timestamp (no PostgreSQL twin)
    charset: str | None = None  # MariaDB character set of a text column
    collation: str | None = None  # text columns; None: the database default (PostgreSQL)


@dataclass(frozen=True, slots=True)
class IndexInfo:
    columns: tuple[str, ...]  # column names, or expression text
    unique: bool
    name: str
    predicate: str | None = None  # partial index (PostgreSQL)


@dataclass(slots=True)
class TableInfo:
    schema: str
    name: str
    columns: list[ColumnInfo] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    indexes: list[IndexInfo] = field(default_factory=list)  # primary key excluded

    def column(self, name: str) -> ColumnInfo:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.schema}.{self.name} has no column {name!r}")


# --------------------------------------------------------------------------- connections


class StoreConn:
    """One connection to one store, with the few calls parity and repair need."""

    def __init__(self, dsn: StoreDsn, raw: Any) -> None:
        self.dsn = dsn
        self.engine = dsn.engine
        self.raw = raw

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.engine == "postgresql":
            return [tuple(r) for r in await self.raw.fetch(sql, *args)]
        async with self.raw.cursor() as cur:
            await cur.execute(sql, tuple(args) if args else None)
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; return the rows it affected."""
        if self.engine == "postgresql":
            status = await self.raw.execute(sql, *args)
            tail = status.rsplit(" ", 1)[-1]
            return int(tail) if tail.isdigit() else 0
        async with self.raw.cursor() as cur:
            return int(await cur.execute(sql, tuple(args) if args else None))

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.engine == "postgresql":
            await self.raw.executemany(sql, rows)
            return
        async with self.raw.cursor() as cur:
            await cur.executemany(sql, [tuple(r) for r in rows])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Commit on success, roll back on any error (which then propagates)."""
        if self.engine == "postgresql":
            async with self.raw.transaction():
                yield
            return
        await self.raw.begin()
        try:
            yield
        except BaseException:
            await self.raw.rollback()
            raise
        await self.raw.commit()

    async def close(self) -> None:
        if self.engine == "postgresql":
            await self.raw.close()
        else:
            self.raw.close()


async def connect(dsn: StoreDsn) -> StoreConn:
    if dsn.engine == "postgresql":
        raw: Any = await asyncpg.connect(
            host=dsn.host,
            port=dsn.port,
            user=dsn.user,
            password=dsn.password or None,
            database=dsn.database,
        )
        return StoreConn(dsn, raw)
    raw = await aiomysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password or "",
        db=dsn.database,
        charset="utf8mb4",
        autocommit=True,
    )
    _fix_bytes_escape(raw)
    conn = StoreConn(dsn, raw)
    # TIMESTAMP values cross the wire in the session time zone: pin it to UTC so
    # the values read and written are UTC on both engines.
    await conn.fetch("SET time_zone = '+00:00'")
    return conn


def _fix_bytes_escape(raw: Any) -> None:
    """aiomysql 0.3 escapes bytes parameters with a helper PyMySQL 1.2 no longer
    provides (a TypeError at run time): escape them as PyMySQL does itself."""
    original = raw.escape

    def escape(obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray):
            return pymysql.converters.escape_bytes(bytes(obj))
        return original(obj)

    raw.escape = raw.literal = escape


def default_schema(dsn: StoreDsn, schema: str | None) -> str:
    """PostgreSQL: the schema asked for, else ``public``.  MariaDB: the DSN's
    database (a MariaDB schema *is* a database, and ``--schema public`` given for
    the PostgreSQL side of a cross-engine pair must not redirect it; callers
    comparing two MariaDB stores pass an explicit schema through themselves)."""
    if dsn.engine == "postgresql":
        return schema or "public"
    return dsn.database


def select_tables(names: list[str], tables: list[str] | None, exclude: list[str]) -> list[str]:
    """Filter by ``--tables`` and ``--exclude`` (shell-style patterns allowed)."""
    chosen = [n for n in names if not tables or any(fnmatch.fnmatchcase(n, p) for p in tables)]
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


async def read_tables(
    conn: StoreConn, schema: str, only: Sequence[str] | None = None
) -> dict[str, TableInfo]:
    """All base tables of ``schema`` (or just ``only``), with columns, keys and indexes."""
    if conn.engine == "postgresql":
        return await _read_pg(conn, schema, only)
    return await _read_my(conn, schema, only)


# --------------------------------------------------------------------------- PostgreSQL

_PG_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = $1 AND table_type = 'BASE TABLE'
ORDER BY table_name
"""

_PG_COLUMNS = """
SELECT c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod),
       NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
       a.attgenerated::text,
       CASE WHEN t.typtype = 'e' THEN
         ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid
               ORDER BY e.enumsortorder)
       END,
       CASE WHEN a.attcollation NOT IN (0, 100)
         THEN (SELECT collname::text FROM pg_collation WHERE oid = a.attcollation) END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""

# Key columns of every index by position; pg_get_indexdef(oid, k, true) names the
# column or prints the expression, so expression indexes compare by their text.
_PG_INDEXES = """
SELECT c.relname, i.relname, x.indisprimary, x.indisunique,
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(1, x.indnkeyatts) AS k ORDER BY k),
       pg_get_expr(x.indpred, x.indrelid, true)
FROM pg_index x
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
ORDER BY c.relname, i.relname
"""


async def _read_pg(
    conn: StoreConn, schema: str, only: Sequence[str] | None
) -> dict[str, TableInfo]:
    names = [r[0] for r in await conn.fetch(_PG_TABLES, [schema])]
    if only is not None:
        names = [n for n in names if n in set(only)]
    tables = {n: TableInfo(schema, n) for n in names}
    for rel, name, num, typ, nullable, default, ident, gen, labels, coll in await conn.fetch(
        _PG_COLUMNS, [schema, names]
    ):
        serial = default is not None and default.startswith("nextval(")
        tables[rel].columns.append(
            ColumnInfo(
                name=name,
                position=num,
                type=typ,
                nullable=nullable,
                default=None if ident or gen else default,
                auto_increment=serial or ident in ("a", "d"),
                identity_always=ident == "a",
                generated=gen == "s",
                enum_labels=tuple(labels or ()),
                is_json=typ in ("json", "jsonb"),
                collation=coll,
            )
        )
    for rel, iname, primary, unique, cols, pred in await conn.fetch(_PG_INDEXES, [schema, names]):
        if primary:
            tables[rel].primary_key = tuple(cols)
        else:
            tables[rel].indexes.append(IndexInfo(tuple(cols), unique, iname, pred))
    return tables


# --------------------------------------------------------------------------- MariaDB

_MY_TABLES = """
SELECT TABLE_NAME FROM information_schema.TABLES
WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'
ORDER BY TABLE_NAME
"""

_MY_COLUMNS = """
SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE = 'YES',
       COLUMN_DEFAULT, EXTRA, CHARACTER_SET_NAME, COLLATION_NAME
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = %s
ORDER BY TABLE_NAME, ORDINAL_POSITION
"""

# MariaDB stores JSON as LONGTEXT with a json_valid() check named after the column.
_MY_JSON_CHECKS = """
SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
WHERE CONSTRAINT_SCHEMA = %s AND CHECK_CLAUSE LIKE 'json_valid(%%'
"""

_MY_INDEXES = """
SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE = 0, COLUMN_NAME, SUB_PART
FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = %s
ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""


def _as_str(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


async def _read_my(
    conn: StoreConn, schema: str, only: Sequence[str] | None
) -> dict[str, TableInfo]:
    names = [_as_str(r[0]) for r in await conn.fetch(_MY_TABLES, [schema])]
    if only is not None:
        names = [n for n in names if n in set(only)]
    tables = {n: TableInfo(schema, n) for n in names}
    json_cols = {
        (_as_str(t), _as_str(clause)[len("json_valid(") : -1].strip("`"))
        for t, clause in await conn.fetch(_MY_JSON_CHECKS, [schema])
    }
    version = str((await conn.fetch("SELECT VERSION()"))[0][0])
    # MariaDB (10.2.7+) shows defaults as SQL expressions ('abc', 1, NULL);
    # MySQL shows literals bare (abc) and flags expressions DEFAULT_GENERATED.
    quoted_defaults = "mariadb" in version.lower()
    for rel, name, pos, typ, nullable, default, extra, charset, collation in await conn.fetch(
        _MY_COLUMNS, [schema]
    ):
        rel, name, typ, extra = _as_str(rel), _as_str(name), _as_str(typ), _as_str(extra or "")
        if rel not in tables:
            continue
        generated = any(g in extra.upper() for g in ("VIRTUAL GENERATED", "STORED GENERATED"))
        default = _my_default(_as_str(default), extra, quoted_defaults)
        tables[rel].columns.append(
            ColumnInfo(
                name=name,
                position=int(pos),
                type=typ,
                nullable=bool(nullable),
                # An explicit DEFAULT NULL is the text 'NULL': the same as none.
                default=None if generated else default,
                auto_increment="auto_increment" in extra.lower(),
                generated=generated,
                enum_labels=_enum_labels(typ),
                is_json=(rel, name) in json_cols,
                on_update="current_timestamp" if "on update" in extra.lower() else None,
                charset=_as_str(charset),
                collation=_as_str(collation),
            )
        )
    grouped: dict[tuple[str, str], list[tuple[bool, str, Any]]] = defaultdict(list)
    for rel, iname, unique, col, sub_part in await conn.fetch(_MY_INDEXES, [schema]):
        rel, iname, col = _as_str(rel), _as_str(iname), _as_str(col)
        if rel in tables:
            grouped[(rel, iname)].append((bool(unique), col, sub_part))
    for (rel, iname), parts in grouped.items():
        # A prefix index covers only the first n characters: say so in its columns.
        cols = tuple(c if sp is None else f"{c}({sp})" for _, c, sp in parts)
        if iname == "PRIMARY":
            tables[rel].primary_key = cols
        else:
            tables[rel].indexes.append(IndexInfo(cols, parts[0][0], iname))
    return tables


def _my_default(default: str | None, extra: str, quoted: bool) -> str | None:
    """The default as an SQL expression (None: none, or an explicit DEFAULT NULL)."""
    if default is None or (quoted and default == "NULL"):
        return None
    if quoted or "DEFAULT_GENERATED" in extra.upper():
        return default
    return "'" + default.replace("'", "''") + "'"


def _enum_labels(column_type: str) -> tuple[str, ...]:
    """``enum('a','it''s')`` -> ("a", "it's")."""
    if not column_type.lower().startswith("enum("):
        return ()
    body, labels, i = column_type[5:-1], [], 0
    while i < len(body):
        if body[i] != "'":
            i += 1
            continue
        j, buf = i + 1, []
        while j < len(body):
            if body[j] == "'" and j + 1 < len(body) and body[j + 1] == "'":
                buf.append("'")
                j += 2
            elif body[j] == "'":
                break
            else:
                buf.append(body[j])
                j += 1
        labels.append("".join(buf))
        i = j + 1
    return tuple(labels)
