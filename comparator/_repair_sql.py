"""The statements repair and undo run against one table of one store.

``TableIO`` reads rows by key and writes them back, in the table's own column
order (generated columns are neither read nor written: the store computes
them).  Rows and keys are tuples of driver values; converting them between
engines is ``_repair_values``' job.

Reading by key joins the table with the batch of keys (PostgreSQL: typed
arrays through ``unnest``; MariaDB: an OR of key equalities, which its range
optimizer turns into index lookups) so a batch costs index probes, never a
scan.  A keyless table is matched on every column with null-safe equality
(``IS NOT DISTINCT FROM`` / ``<=>``), and one copy of a row is deleted through
its ``ctid`` (PostgreSQL) or ``LIMIT`` (MariaDB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from comparator._schema_catalog import ColumnInfo, StoreConn, TableInfo
from comparator._schema_types import TypeSpec, parse

Lock = Literal["update", "share"] | None


def quote_ident(engine: str, name: str) -> str:
    if engine == "postgresql":
        return '"' + name.replace('"', '""') + '"'
    # Every MariaDB statement here takes parameters, and aiomysql formats them with
    # %: a % in a name must be doubled.
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


class TableIO:
    def __init__(self, conn: StoreConn, table: TableInfo, key: Sequence[str]) -> None:
        self.conn, self.engine, self.table = conn, conn.engine, table
        self.columns: list[ColumnInfo] = [c for c in table.columns if not c.generated]
        self.names = [c.name for c in self.columns]
        self.specs: list[TypeSpec] = [parse(self.engine, c) for c in self.columns]
        self.key = list(key)
        self.key_index = [self.names.index(k) for k in self.key]
        self.key_specs = [self.specs[i] for i in self.key_index]
        self._pg = self.engine == "postgresql"
        q = self._q
        self.relation = f"{q(table.schema)}.{q(table.name)}"
        self.column_list = ", ".join(q(n) for n in self.names)

    def _q(self, name: str) -> str:
        return quote_ident(self.engine, name)

    def _p(self, n: int) -> str:
        """The n-th (1-based) placeholder."""
        return f"${n}" if self._pg else "%s"

    # ------------------------------------------------------------------ reads

    async def fetch_by_keys(
        self, keys: Sequence[Sequence[Any]], lock: Lock = None
    ) -> list[tuple[Any, ...]]:
        """The rows with these keys, locked ``for update`` or ``for share`` when asked
        (inside a transaction)."""
        if not keys:
            return []
        suffix = {None: "", "update": " FOR UPDATE", "share": " LOCK IN SHARE MODE"}[lock]
        if self._pg:
            arrays = [f"${i + 1}::{self.columns[ix].type}[]" for i, ix in enumerate(self.key_index)]
            names = ", ".join(f"k{i}" for i in range(len(self.key)))
            on = " AND ".join(f"t.{self._q(k)} = k.k{i}" for i, k in enumerate(self.key))
            sql = (
                f"SELECT {', '.join('t.' + self._q(n) for n in self.names)} "  # noqa: S608
                f"FROM unnest({', '.join(arrays)}) AS k({names}) JOIN {self.relation} t ON {on}"
                + (f" FOR {lock.upper()} OF t" if lock else "")
            )
            return await self.conn.fetch(sql, [list(col) for col in zip(*keys, strict=True)])
        one = "(" + " AND ".join(f"{self._q(k)} = %s" for k in self.key) + ")"
        sql = (
            f"SELECT {self.column_list} FROM {self.relation} WHERE "
            + " OR ".join(  # noqa: S608
                [one] * len(keys)
            )
            + suffix
        )
        return await self.conn.fetch(sql, [v for key in keys for v in key])

    def _match(self, start: int = 1) -> str:
        """Null-safe equality on every column, parameters from ``start``."""
        parts = []
        for i, col in enumerate(self.columns):
            p = self._p(start + i)
            if not self._pg:
                parts.append(f"{self._q(col.name)} <=> {p}")
            elif col.type == "json":  # json has no equality operator: compare its text
                parts.append(f"{self._q(col.name)}::text IS NOT DISTINCT FROM {p}::text")
            else:
                parts.append(f"{self._q(col.name)} IS NOT DISTINCT FROM {p}::{col.type}")
        return " AND ".join(parts)

    async def count_rows(self, row: Sequence[Any]) -> int:
        sql = f"SELECT count(*) FROM {self.relation} WHERE {self._match()}"  # noqa: S608
        return int((await self.conn.fetch(sql, row))[0][0])

    # ------------------------------------------------------------------ writes

    async def insert(self, rows: Sequence[Sequence[Any]]) -> None:
        # GENERATED ALWAYS identity columns refuse explicit values unless told.
        override = (
            " OVERRIDING SYSTEM VALUE" if any(c.identity_always for c in self.columns) else ""
        )
        values = ", ".join(self._p(i + 1) for i in range(len(self.names)))
        sql = f"INSERT INTO {self.relation} ({self.column_list}){override} VALUES ({values})"  # noqa: S608
        await self.conn.execute_many(sql, rows)

    def _where_key(self, start: int) -> str:
        return " AND ".join(f"{self._q(k)} = {self._p(start + i)}" for i, k in enumerate(self.key))

    async def update(self, rows: Sequence[Sequence[Any]]) -> None:
        """Set every non-key column of each row, found by its key."""
        rest = [i for i in range(len(self.names)) if i not in self.key_index]
        if not rest:
            return  # a row made of its key only: nothing to update
        sets = ", ".join(f"{self._q(self.names[i])} = {self._p(n + 1)}" for n, i in enumerate(rest))
        sql = f"UPDATE {self.relation} SET {sets} WHERE {self._where_key(len(rest) + 1)}"  # noqa: S608
        params = [[row[i] for i in rest] + [row[i] for i in self.key_index] for row in rows]
        await self.conn.execute_many(sql, params)

    async def delete(self, keys: Sequence[Sequence[Any]]) -> None:
        sql = f"DELETE FROM {self.relation} WHERE {self._where_key(1)}"  # noqa: S608
        await self.conn.execute_many(sql, keys)

    async def delete_copies(self, row: Sequence[Any], copies: int) -> int:
        """Delete ``copies`` rows equal to ``row`` (a keyless table); return how many went."""
        if self._pg:
            sql = (
                f"DELETE FROM {self.relation} WHERE ctid IN (SELECT ctid FROM {self.relation} "  # noqa: S608
                f"WHERE {self._match()} LIMIT {int(copies)})"
            )
        else:
            sql = f"DELETE FROM {self.relation} WHERE {self._match()} LIMIT {int(copies)}"  # noqa: S608
        return await self.conn.execute(sql, row)

    async def advance_sequences(self) -> None:
        """Move serial/identity sequences past the keys repair inserted (PostgreSQL).

        Rows inserted with explicit keys leave the sequence behind; the
        application's next insert would then collide.  MariaDB's auto_increment
        follows explicit values by itself."""
        if not self._pg:
            return
        for col in self.columns:
            if not col.auto_increment:
                continue
            sql = (
                "SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence($1, $2)::regclass AS s, "
                f"(SELECT max({self._q(col.name)}) FROM {self.relation}) AS m) x "  # noqa: S608
                "WHERE s IS NOT NULL AND m > coalesce(pg_sequence_last_value(s), 0)"
            )
            await self.conn.fetch(sql, [self.relation, col.name])
