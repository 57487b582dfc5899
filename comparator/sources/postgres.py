"""PostgreSQL source (asyncpg): catalogs, keyset boundaries and checksums in the database."""

from __future__ import annotations

from typing import Any

import asyncpg

from comparator.dsn import StoreDsn
from comparator.normalize import Column
from comparator.sources.base import (
    Checksum,
    Key,
    KeyRange,
    Source,
    TableQuery,
    TableShape,
    bucket_tree,
    param_text,
)

# Boundaries at least this far apart are found by a keyset walk (one cheap index step
# each); closer ones by one window query over the range.
WALK_MIN_STEP = 5000

_SERVER_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "application_name": "shadowproxy-compare",
    # Plan every query with its own key range: a cached generic plan knows neither
    # how many rows the range holds nor the thresholds below as constants.
    "plan_cache_mode": "force_custom_plan",
}

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, t.typtype, a.atttypmod
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Primary key first, then unique indexes without expressions or predicates whose
# columns are all NOT NULL; fewest columns wins.
_KEYS_SQL = """
SELECT i.indisprimary,
       array_agg(a.attname ORDER BY k.ord) AS cols,
       bool_and(a.attnotnull) AS notnull
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indpred IS NULL
  AND i.indisvalid AND NOT (0 = ANY (i.indkey::int2[]))
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC, count(*), i.indexrelid
"""


async def pg_pool(
    d: StoreDsn, size: int, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    """A pool of up to ``size`` connections to the store of ``d``."""
    return await asyncpg.create_pool(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password,
        database=d.database,
        min_size=1,
        max_size=size,
        server_settings=server_settings,
    )


class PostgresSource(Source):
    pool: asyncpg.Pool

    async def open(self) -> None:
        self.pool = await pg_pool(self.dsn, self.pool_size, _SERVER_SETTINGS)

    async def close(self) -> None:
        await self.pool.close()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def list_tables(self, schema: str) -> list[str]:
        rows = await self._fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY 1",
            schema,
        )
        return [r[0] for r in rows]

    async def describe(self, schema: str, table: str) -> TableShape | None:
        cols = await self._fetch(_COLUMNS_SQL, schema, table)
        if not cols:
            return None
        columns = [_column(*r) for r in cols]
        keys = await self._fetch(_KEYS_SQL, schema, table)
        key = next((list(k["cols"]) for k in keys if k["notnull"]), [])
        est = await self._fetch(
            "SELECT greatest(c.reltuples, 0)::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            schema,
            table,
        )
        return TableShape(schema, table, columns, key, int(est[0][0]) if est else 0)

    # ------------------------------------------------------------------ predicates

    def _types(self, tq: TableQuery) -> list[str]:
        return [tq.shape.column(k).type for k in tq.key]

    def _range(self, tq: TableQuery, lo: Key | None, hi: Key | None, args: list[Any]) -> str:
        keys = ", ".join(tq.q(k) for k in tq.key)
        lhs = f"({keys})" if len(tq.key) > 1 else keys
        parts = []
        for bound, op in ((lo, ">="), (hi, "<")):
            if bound is not None:
                parts.append(f"{lhs} {op} {self._lits(tq, bound, args)}")
        return " AND ".join(parts) or "TRUE"

    def _lits(self, tq: TableQuery, key: Key, args: list[Any]) -> str:
        lits = []
        for value, typ in zip(key, self._types(tq), strict=True):
            args.append(param_text(value))
            lits.append(f"${len(args)}::text::{typ}")
        return f"({', '.join(lits)})" if len(lits) > 1 else lits[0]

    # -------------------------------------------------------------------- queries

    async def boundaries(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, every: int
    ) -> list[Key]:
        keys = ", ".join(tq.q(k) for k in tq.key)
        if every >= WALK_MIN_STEP:
            return await self._walk(tq, lo, hi, every, keys)
        args: list[Any] = []
        where = self._range(tq, lo, hi, args)
        args.append(every)
        sql = (
            f"SELECT {keys} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS _sp_rn "
            f"FROM {tq.qualified} WHERE {where}) s "
            f"WHERE _sp_rn > 1 AND (_sp_rn - 1) % ${len(args)} = 0 ORDER BY _sp_rn"
        )
        return [tuple(r) for r in await self._fetch(sql, *args)]

    async def _walk(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, every: int, keys: str
    ) -> list[Key]:
        """Keyset walk: each step skips ``every`` index entries from the last boundary."""
        out: list[Key] = []
        cur = lo
        async with self.pool.acquire() as conn:
            while True:
                args: list[Any] = []
                where = self._range(tq, cur, hi, args)
                args.append(every)
                row = await conn.fetchrow(
                    f"SELECT {keys} FROM {tq.qualified} WHERE {where} "
                    f"ORDER BY {keys} OFFSET ${len(args)} LIMIT 1",
                    *args,
                )
                if row is None:
                    return out
                cur = tuple(row)
                out.append(cur)

    async def checksum(self, tq: TableQuery, lo: Key | None, hi: Key | None) -> Checksum:
        args: list[Any] = []
        where = self._range(tq, lo, hi, args) if tq.key else "TRUE"
        rows = await self._fetch(
            f"SELECT {tq.checksum_list} FROM {tq.qualified} WHERE {where}", *args
        )
        return int(rows[0][0]), int(rows[0][1])

    async def bucket_checksums(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, bounds: list[Key]
    ) -> dict[int, Checksum]:
        args: list[Any] = []
        where = self._range(tq, lo, hi, args)
        if len(tq.key) == 1:
            # width_bucket does a binary search in C over the sorted thresholds.  The
            # thresholds are converted once, in a scalar subquery: written inline the
            # text[] -> key[] cast is not folded and runs for every row (~100x slower).
            args.append([param_text(b[0]) for b in bounds])
            typ = self._types(tq)[0]
            thresholds = f"(SELECT ${len(args)}::text[]::{typ}[])"
            bucket = f"width_bucket({tq.q(tq.key[0])}, {thresholds})"
        else:
            keys = f"({', '.join(tq.q(k) for k in tq.key)})"
            lits = [self._lits(tq, b, args) for b in bounds]
            bucket = bucket_tree([keys], [[lit] for lit in lits], lambda k, b: f"{k[0]} < {b[0]}")
        sql = (
            f"SELECT {bucket} AS b, {tq.checksum_list} FROM {tq.qualified} WHERE {where} GROUP BY 1"
        )
        return {int(r[0]): (int(r[1]), int(r[2])) for r in await self._fetch(sql, *args)}

    async def key_hashes(self, tq: TableQuery, ranges: list[KeyRange]) -> list[tuple[Any, ...]]:
        args: list[Any] = []
        where = " OR ".join(f"({self._range(tq, lo, hi, args)})" for lo, hi in ranges)
        cols = [tq.q(k) for k in tq.key] + [tq.row_hash] + tq.extra_exprs
        rows = await self._fetch(
            f"SELECT {', '.join(cols)} FROM {tq.qualified} WHERE {where}", *args
        )
        return [tuple(r) for r in rows]

    async def rows_by_keys(self, tq: TableQuery, keys: list[Key]) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        cols = ", ".join(tq.q(c) for c in tq.columns)
        types = self._types(tq)
        args = [[param_text(k[i]) for k in keys] for i in range(len(tq.key))]
        if len(tq.key) == 1:
            where = f"{tq.q(tq.key[0])} = ANY($1::text[]::{types[0]}[])"
        else:
            names = ", ".join(f"k{i}" for i in range(len(tq.key)))
            unnest = ", ".join(f"${i + 1}::text[]" for i in range(len(tq.key)))
            casts = ", ".join(f"u.k{i}::{t}" for i, t in enumerate(types))
            lhs = ", ".join(tq.q(k) for k in tq.key)
            where = f"({lhs}) IN (SELECT {casts} FROM unnest({unnest}) AS u({names}))"
        rows = await self._fetch(f"SELECT {cols} FROM {tq.qualified} WHERE {where}", *args)
        return [tuple(r) for r in rows]

    async def hash_buckets(self, tq: TableQuery, width: int) -> dict[str, Checksum]:
        sql = (
            f"SELECT {tq.bucket_of('_sp_h', width)}, count(*), "
            f"coalesce(sum({tq.sum_of('_sp_h')}), 0) "
            f"FROM (SELECT {tq.row_hash} AS _sp_h FROM {tq.qualified} OFFSET 0) s GROUP BY 1"
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in await self._fetch(sql)}

    async def rows_in_buckets(
        self, tq: TableQuery, width: int, buckets: list[str]
    ) -> list[tuple[Any, ...]]:
        cols = ", ".join(tq.q(c) for c in tq.columns)
        sql = (
            f"SELECT * FROM (SELECT {cols}, {tq.row_hash} AS _sp_h FROM {tq.qualified} "
            f"OFFSET 0) s WHERE {tq.bucket_of('_sp_h', width)} = ANY($1::text[])"
        )
        return [tuple(r) for r in await self._fetch(sql, buckets)]


def _column(name: str, ftype: str, typname: str, typtype: str, typmod: int) -> Column:
    scale = None
    precision = None
    if typname == "numeric" and typmod >= 4:
        scale = (typmod - 4) & 0xFFFF
    if typname in ("timestamp", "timestamptz", "time", "timetz"):
        precision = typmod if typmod >= 0 else 6
    return Column(
        name=name,
        engine="postgresql",
        type=ftype,
        data_type=typname,
        numeric_scale=scale,
        datetime_precision=precision,
        is_enum=typtype == "e",
    )
