"""What a comparator source does, whatever its engine.

A source answers questions about one store, each pushed down into the database:
which tables and keys exist, every Nth key of a key range (segment boundaries chosen
by the database's own ordering), the row count and checksum of a key range or of
buckets inside it, and the key and row hash of each row of a small range.  Key ranges
are half-open ``[lo, hi)`` with ``None`` for an open end.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from comparator.dsn import Engine, StoreDsn
from comparator.normalize import Column, quote_ident
from comparator.rowhash import hash_sum_sql, pg64_hash_sql, row_hash_sql, row_text_sql

Key = tuple[Any, ...]
Checksum = tuple[int, int]  # (row count, sum of 60-bit row hashes)
KeyRange = tuple[Key | None, Key | None]  # [lo, hi), None for an open end
INTEGER_TYPES = frozenset(
    {"int2", "int4", "int8", "tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
)


@dataclass(frozen=True)
class TableShape:
    """A table as one store's catalog describes it."""

    schema: str
    name: str
    columns: list[Column]
    key: list[str]  # primary key, else a unique not-null key, else [] (keyless)
    estimated_rows: int = 0

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


@dataclass(frozen=True)
class TableQuery:
    """The SQL pieces one side uses to compare one table."""

    shape: TableShape
    columns: list[str]  # compared columns, in authoritative order
    exprs: list[str]  # their canonical-text SQL expressions
    safe: list[bool]  # per column: needs no length prefix in the row text
    key: list[str]  # key columns ([] when keyless)
    extra_exprs: list[str] = field(default_factory=list)  # fetched with the hashes (JSON)
    # Both sides are PostgreSQL with identical column types: 64-bit native hashes.
    pg64: bool = False

    @property
    def engine(self) -> Engine:
        return self.shape.columns[0].engine

    def q(self, name: str) -> str:
        return quote_ident(self.engine, name)

    @property
    def qualified(self) -> str:
        return f"{self.q(self.shape.schema)}.{self.q(self.shape.name)}"

    @property
    def row_hash(self) -> str:
        if self.pg64:
            cols = [(self.q(c), self.shape.column(c).data_type) for c in self.columns]
            return pg64_hash_sql(cols)
        return row_hash_sql(self.engine, row_text_sql(self.engine, self.exprs, self.safe))

    def sum_of(self, hash_expr: str) -> str:
        """The integer a row hash adds to a checksum."""
        return hash_expr if self.pg64 else hash_sum_sql(self.engine, hash_expr)

    @property
    def checksum_list(self) -> str:
        """``count, sum`` over row hashes (a sum, so duplicate rows still count)."""
        total = self.sum_of(self.row_hash)
        if self.engine == "postgresql":
            return f"count(*), coalesce(sum({total}), 0)"
        return f"COUNT(*), COALESCE(SUM({total}), 0)"

    def bucket_of(self, hash_expr: str, width: int) -> str:
        """Keyless tables: the hash bucket of a row, as text."""
        if self.pg64:
            return f"({hash_expr} & {16**width - 1})::text"
        return (
            f"left({hash_expr}, {width})"
            if self.engine == "postgresql"
            else f"LEFT({hash_expr}, {width})"
        )


class Source(abc.ABC):
    """One store, read through a small pool of connections."""

    def __init__(self, dsn: StoreDsn, pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def list_tables(self, schema: str) -> list[str]: ...

    @abc.abstractmethod
    async def describe(self, schema: str, table: str) -> TableShape | None: ...

    @abc.abstractmethod
    async def boundaries(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, every: int
    ) -> list[Key]:
        """Every ``every``-th key of ``[lo, hi)`` in key order (the first key excluded)."""

    @abc.abstractmethod
    async def checksum(self, tq: TableQuery, lo: Key | None, hi: Key | None) -> Checksum: ...

    def bucket_limit(self, tq: TableQuery) -> int:
        """How many buckets one grouped query may use.

        A single integer key is bucketed by a binary search done in C (width_bucket,
        INTERVAL); other keys by a CASE tree of row comparisons, which grows costly.
        """
        col = tq.shape.column(tq.key[0])
        integer = col.data_type in INTEGER_TYPES
        return 4096 if len(tq.key) == 1 and integer else 256

    @abc.abstractmethod
    async def bucket_checksums(
        self, tq: TableQuery, lo: Key | None, hi: Key | None, bounds: list[Key]
    ) -> dict[int, Checksum]:
        """Checksums of ``[lo, b1), [b1, b2), …, [bn, hi)`` keyed 0..n (empty buckets absent)."""

    @abc.abstractmethod
    async def key_hashes(self, tq: TableQuery, ranges: list[KeyRange]) -> list[tuple[Any, ...]]:
        """``(*key, row hash, *extra)`` for every row in any of the ranges."""

    @abc.abstractmethod
    async def rows_by_keys(self, tq: TableQuery, keys: list[Key]) -> list[tuple[Any, ...]]:
        """Raw rows (compared columns, in order) whose key is in ``keys``."""

    @abc.abstractmethod
    async def hash_buckets(self, tq: TableQuery, width: int) -> dict[str, Checksum]:
        """Keyless tables: checksums grouped by the first ``width`` hex digits of the row hash."""

    @abc.abstractmethod
    async def rows_in_buckets(
        self, tq: TableQuery, width: int, buckets: list[str]
    ) -> list[tuple[Any, ...]]:
        """Keyless tables: ``(*row, row hash)`` of every row in the given hash buckets."""


def bucket_tree(key_exprs: list[str], bound_lits: list[list[str]], lt: Any) -> str:
    """A balanced CASE returning the index of the bucket ``[b_i, b_i+1)`` holding a row.

    ``lt(key_exprs, lits)`` renders ``key < lits``; the tree does log2(n) comparisons.
    """

    def node(first: int, last: int) -> str:  # buckets first..last (inclusive)
        if first == last:
            return str(first)
        mid = (first + last + 1) // 2  # bucket mid starts at bound_lits[mid - 1]
        return (
            f"CASE WHEN {lt(key_exprs, bound_lits[mid - 1])} "
            f"THEN {node(first, mid - 1)} ELSE {node(mid, last)} END"
        )

    return node(0, len(bound_lits))


def param_text(value: Any) -> str | None:
    """A key value as input text both engines parse (keys cross engines as text)."""
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, dt.timedelta):
        micros = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
        secs, frac = divmod(micros, 1_000_000)
        return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}"
    if isinstance(value, float):
        return repr(value)
    return str(value)
