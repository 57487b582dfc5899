"""MySQL / MariaDB source (aiomysql): catalogs, keyset boundaries and checksums in the database.

Values are inlined as literals escaped by PyMySQL's own escaper (queries are sent
without client-side ``%`` interpolation, so DATE_FORMAT patterns pass untouched).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import aiomysql
from pymysql.converters import escape_item

from comparator.normalize import Column, Family, family
from comparator.sources.base import (
    INTEGER_TYPES,
    Checksum,
    Key,
    KeyRange,
    Source,
    TableQuery,
    TableShape,
    bucket_tree,
)

_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, NUMERIC_SCALE, DATETIME_PRECISION, "
    "CHARACTER_SET_NAME FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)
# MariaDB's JSON is LONGTEXT with a json_valid() check constraint.
_JSON_CHECKS_SQL = (
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s"
)
_KEYS_SQL = (
    "SELECT s.INDEX_NAME, s.COLUMN_NAME, c.IS_NULLABLE, s.SUB_PART "
    "FROM information_schema.STATISTICS s JOIN information_schema.COLUMNS c "
    "ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME "
    "AND c.COLUMN_NAME = s.COLUMN_NAME "
    "WHERE s.TABLE_SCHEMA = %s AND s.TABLE_NAME = %s AND s.NON_UNIQUE = 0 "
    "ORDER BY s.INDEX_NAME, s.SEQ_IN_INDEX"
)
# Boundaries at least this far apart are found by a keyset walk (one cheap index step
# each); closer ones by one window query over the range.
WALK_MIN_STEP = 5000


class MysqlSource(Source):
    pool: aiomysql.Pool

    async def open(self) -> None:
        d = self.dsn
        self.pool = await aiomysql.create_pool(
            host=d.host,
            port=d.port,
            user=d.user,
            password=d.password or "",
            db=d.database,
            minsize=1,
            maxsize=self.pool_size,
            charset="utf8mb4",
            autocommit=True,
            # TIMESTAMP columns are rendered in the session time zone: compare in UTC.
            init_command="SET time_zone = '+00:00'",
        )

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    async def _fetch(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def list_tables(self, schema: str) -> list[str]:
        rows = await self._fetch(
            "SELECT TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
            (schema,),
        )
        return [r[0] for r in rows]

    async def describe(self, schema: str, table: str) -> TableShape | None:
        cols = await self._fetch(_COLUMNS_SQL, (schema, table))
        if not cols:
            return None
        checks = " ".join(r[0] for r in await self._fetch(_JSON_CHECKS_SQL, (schema, table)))
        columns = [_column(r, checks) for r in cols]
        est = await self._fetch(
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, table),
        )
        key = _pick_key(await self._fetch(_KEYS_SQL, (schema, table)))
        return TableShape(schema, table, columns, key, int((est[0][0] or 0) if est else 0))

    # ------------------------------------------------------------------ predicates

    def _lit(self, tq: TableQuery, name: str, value: Any) -> str:
        col = tq.shape.column(name)
        return str(escape_item(_mysql_value(col, value), "utf8mb4"))

    def _lex(self, tq: TableQuery, bound: Key, strict: str, last: str) -> str:
        """``key <op> bound`` in lexicographic order, expanded so ranges use the index."""
        terms = [(tq.q(k), self._lit(tq, k, v)) for k, v in zip(tq.key, bound, strict=True)]
        col, lit = terms[-1]
        expr = f"{col} {last} {lit}"
        for col, lit in reversed(terms[:-1]):
            expr = f"({col} {strict} {lit} OR ({col} = {lit} AND {expr}))"
        return expr

    def _range(self, tq: TableQuery, lo: Key | None, hi: Key | None) -> str:
        parts = []
        if lo is not None:
            parts.append(self._lex(tq, lo, ">", ">="))
        if hi is not None:
            parts.append(self._lex(tq, hi, "<", "<"))
        return " AND ".join(parts) or "TRUE"

    # -------------------------------------------------------------------- queries

    async def boundaries(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, every: int
    ) -> list[Key]:
        keys = ", ".join(tq.q(k) for k in tq.key)
        if every >= WALK_MIN_STEP:
            return await self._walk(tq, lo, hi, every, keys)
        sql = (
            f"SELECT {keys} FROM (SELECT {keys}, ROW_NUMBER() OVER (ORDER BY {keys}) AS _sp_rn "
            f"FROM {tq.qualified} WHERE {self._range(tq, lo, hi)}) s "
            f"WHERE _sp_rn > 1 AND (_sp_rn - 1) % {int(every)} = 0 ORDER BY _sp_rn"
        )
        return [tuple(r) for r in await self._fetch(sql)]

    async def _walk(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, every: int, keys: str
    ) -> list[Key]:
        """Keyset walk: each step skips ``every`` index entries from the last boundary."""
        out: list[Key] = []
        cur = lo
        async with self.pool.acquire() as conn, conn.cursor() as cur_:
            while True:
                await cur_.execute(
                    f"SELECT {keys} FROM {tq.qualified} WHERE {self._range(tq, cur, hi)} "
                    f"ORDER BY {keys} LIMIT 1 OFFSET {int(every)}"
                )
                row = await cur_.fetchone()
                if row is None:
                    return out
                cur = tuple(row)
                out.append(cur)

    async def checksum(self, tq: TableQuery, lo: Key | None, hi: Key | None) -> Checksum:
        where = self._range(tq, lo, hi) if tq.key else "TRUE"
        rows = await self._fetch(f"SELECT {tq.checksum_list} FROM {tq.qualified} WHERE {where}")
        return int(rows[0][0]), int(rows[0][1])

    async def bucket_checksums(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, bounds: list[Key]
    ) -> dict[int, Checksum]:
        first = tq.shape.column(tq.key[0])
        if len(tq.key) == 1 and first.data_type in INTEGER_TYPES:
            # INTERVAL() is a binary search over sorted integers, done in C.
            lits = ", ".join(str(int(b[0])) for b in bounds)
            bucket = f"INTERVAL({tq.q(tq.key[0])}, {lits})"
        else:
            bucket = bucket_tree(
                [],
                [[str(i)] for i in range(len(bounds))],
                lambda _k, b: self._lex(tq, bounds[int(b[0])], "<", "<"),
            )
        sql = (
            f"SELECT {bucket} AS b, {tq.checksum_list} FROM {tq.qualified} "
            f"WHERE {self._range(tq, lo, hi)} GROUP BY 1"
        )
        return {int(r[0]): (int(r[1]), int(r[2])) for r in await self._fetch(sql)}

    async def key_hashes(self, tq: TableQuery, ranges: list[KeyRange]) -> list[tuple[Any, ...]]:
        cols = [tq.q(k) for k in tq.key] + [tq.row_hash] + tq.extra_exprs
        where = " OR ".join(f"({self._range(tq, lo, hi)})" for lo, hi in ranges)
        return await self._fetch(f"SELECT {', '.join(cols)} FROM {tq.qualified} WHERE {where}")

    async def rows_by_keys(self, tq: TableQuery, keys: list[Key]) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        cols = ", ".join(tq.q(c) for c in tq.columns)
        lhs = ", ".join(tq.q(k) for k in tq.key)
        tuples = ", ".join(
            "(" + ", ".join(self._lit(tq, n, v) for n, v in zip(tq.key, k, strict=True)) + ")"
            for k in keys
        )
        return await self._fetch(f"SELECT {cols} FROM {tq.qualified} WHERE ({lhs}) IN ({tuples})")

    async def hash_buckets(self, tq: TableQuery, width: int) -> dict[str, Checksum]:
        sql = (
            f"SELECT LEFT(_sp_h, {width}), COUNT(*), COALESCE(SUM({tq.sum_of('_sp_h')}), 0) "
            f"FROM (SELECT {tq.row_hash} AS _sp_h FROM {tq.qualified}) s GROUP BY 1"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in await self._fetch(sql)}

    async def rows_in_buckets(
        self, tq: TableQuery, width: int, buckets: list[str]
    ) -> list[tuple[Any, ...]]:
        cols = ", ".join(tq.q(c) for c in tq.columns)
        wanted = ", ".join(str(escape_item(b, "utf8mb4")) for b in buckets)
        sql = (
            f"SELECT * FROM (SELECT {cols}, {tq.row_hash} AS _sp_h FROM {tq.qualified}) s "
            f"WHERE LEFT(_sp_h, {width}) IN ({wanted})"
        )
        return await self._fetch(sql)


def _column(row: tuple[Any, ...], checks: str) -> Column:
    name, ctype, dtype, scale, precision, charset = row
    dtype = str(dtype).lower()
    if dtype == "longtext" and f"json_valid(`{name}`)" in checks:
        dtype = "json"
    return Column(
        name=name,
        engine="mysql",
        type=str(ctype).lower(),
        data_type=dtype,
        numeric_scale=int(scale) if scale is not None and dtype in ("decimal", "numeric") else None,
        datetime_precision=int(precision) if precision is not None else None,
        charset=charset,
    )


def _pick_key(rows: list[tuple[Any, ...]]) -> list[str]:
    indexes: dict[str, list[tuple[str, bool]]] = {}
    for index, column, nullable, sub_part in rows:
        ok = nullable == "NO" and sub_part is None
        indexes.setdefault(index, []).append((column, ok))
    usable = {n: [c for c, _ in cols] for n, cols in indexes.items() if all(ok for _, ok in cols)}
    if "PRIMARY" in usable:
        return usable["PRIMARY"]
    return min(usable.values(), key=len) if usable else []


def _mysql_value(col: Column, value: Any) -> Any:
    """A key value (possibly read from PostgreSQL) as this MySQL column expects it."""
    if isinstance(value, uuid.UUID):
        return value.bytes if family(col) is Family.BINARY else str(value)
    if isinstance(value, str) and family(col) is Family.BINARY and len(value) == 36:
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, dt.time):
        return value.isoformat()
    return value
