"""Make a target table's rows equal to a desired state, batch by batch, with undo first.

Repair and undo are the same operation with different desired states: repair
wants the authoritative store's rows, undo wants the rows the undo file
recorded.  For a keyed table the desired state is "key -> row, or absent";
for a keyless one it is "row -> number of copies".

Each batch, when applied, is one transaction on the target:

1. read the target's current rows for the batch's keys (``FOR UPDATE``, so
   nothing changes them between the read and the write);
2. decide per key: insert (absent, wanted), update (present, different),
   delete (present, not wanted), or leave it;
3. append one undo record per changed row and fsync the undo file;
4. insert, update, delete; commit.

A dry run does 1 and 2 without a transaction and writes nothing anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from comparator._repair_sql import TableIO
from comparator._repair_undo import UndoWriter, row_record, rows_record
from comparator._repair_values import same_key

Row = tuple[Any, ...]


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0  # asked about, already as desired (e.g. converged since the compare)

    def add(self, other: TableCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.deleted += other.deleted
        self.unchanged += other.unchanged


@dataclass
class _Plan:
    inserts: list[Row]
    updates: list[Row]
    deletes: list[Row]  # keys
    before: list[tuple[Row, Row | None]]  # (key, row as it was or None), for the undo file


class Converger:
    def __init__(
        self,
        io: TableIO,
        counts: TableCounts,
        apply: bool,
        undo: UndoWriter | None = None,
        batch_size: int = 500,
    ) -> None:
        self.io, self.counts, self.apply, self.undo = io, counts, apply, undo
        self.batch_size = max(1, batch_size)

    def row_key(self, row: Sequence[Any]) -> Row:
        return tuple(
            same_key(row[i], s) for i, s in zip(self.io.key_index, self.io.key_specs, strict=True)
        )

    def key_key(self, key: Sequence[Any]) -> Row:
        return tuple(same_key(v, s) for v, s in zip(key, self.io.key_specs, strict=True))

    def row_value(self, row: Sequence[Any]) -> Row:
        return tuple(same_key(v, s) for v, s in zip(row, self.io.specs, strict=True))

    # ------------------------------------------------------------------ keyed tables

    async def keyed(self, desired: Sequence[tuple[Row, Row | None]]) -> None:
        """``desired``: (key, row) pairs in target types; row None means absent."""
        for start in range(0, len(desired), self.batch_size):
            batch = desired[start : start + self.batch_size]
            if not self.apply:
                current = await self.io.fetch_by_keys([k for k, _ in batch])
                self._count(self._plan(batch, current))
                continue
            async with self.io.conn.transaction():
                current = await self.io.fetch_by_keys([k for k, _ in batch], lock="update")
                plan = self._plan(batch, current)
                self._write_undo_keyed(plan)
                await self.io.insert(plan.inserts)
                await self.io.update(plan.updates)
                await self.io.delete(plan.deletes)
            self._count(plan)

    def _plan(self, batch: Sequence[tuple[Row, Row | None]], current: list[Row]) -> _Plan:
        now = {self.row_key(r): r for r in current}
        plan = _Plan([], [], [], [])
        for key, want in batch:
            have = now.get(self.key_key(key))
            if want is None and have is not None:
                plan.deletes.append(key)
            elif want is not None and have is None:
                plan.inserts.append(want)
            elif (
                want is not None
                and have is not None
                and self.row_value(want) != self.row_value(have)
            ):
                plan.updates.append(want)
            else:
                continue
            plan.before.append((key, have))
        self.counts.unchanged += len(batch) - len(plan.before)
        return plan

    def _count(self, plan: _Plan) -> None:
        self.counts.inserted += len(plan.inserts)
        self.counts.updated += len(plan.updates)
        self.counts.deleted += len(plan.deletes)

    def _write_undo_keyed(self, plan: _Plan) -> None:
        if self.undo is None or not plan.before:
            return
        t = self.io.table
        for key, have in plan.before:
            self.undo.add(row_record(t.schema, t.name, self.io.names, self.io.key, key, have))
        self.undo.flush()  # durable before the batch touches the target

    # ------------------------------------------------------------------ keyless tables

    async def keyless(self, desired: Sequence[tuple[Row, int]]) -> None:
        """``desired``: (whole row in target types, number of copies wanted)."""
        for start in range(0, len(desired), self.batch_size):
            batch = desired[start : start + self.batch_size]
            if not self.apply:
                for row, want in batch:
                    self._count_copies(want, await self.io.count_rows(row))
                continue
            async with self.io.conn.transaction():
                have = [await self.io.count_rows(row) for row, _ in batch]
                self._write_undo_keyless(batch, have)
                for (row, want), n in zip(batch, have, strict=True):
                    await self._set_copies(row, want, n)

    def _count_copies(self, want: int, have: int) -> None:
        if want > have:
            self.counts.inserted += want - have
        elif want < have:
            self.counts.deleted += have - want
        else:
            self.counts.unchanged += 1

    async def _set_copies(self, row: Row, want: int, have: int) -> None:
        if want > have:
            await self.io.insert([row] * (want - have))
        elif want < have:
            gone = await self.io.delete_copies(row, have - want)
            if gone != have - want:
                raise RuntimeError(
                    f"{self.io.relation}: expected to delete {have - want} copies of a row, "
                    f"deleted {gone}; the table changed during the repair (rolled back)"
                )
        self._count_copies(want, have)

    def _write_undo_keyless(self, batch: Sequence[tuple[Row, int]], have: list[int]) -> None:
        if self.undo is None:
            return
        t = self.io.table
        changed = [(row, n) for (row, want), n in zip(batch, have, strict=True) if want != n]
        for row, n in changed:
            self.undo.add(rows_record(t.schema, t.name, self.io.names, row, n))
        if changed:
            self.undo.flush()
