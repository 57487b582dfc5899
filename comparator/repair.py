"""Repair: copy the authoritative store's rows to the other store, with an undo file.

``repair`` takes the differences a compare found (``RowDiff``) and, for each
key, makes the target's row what the authoritative row is *now*: insert the
missing, update the mismatched (every non-key column), delete the extra.  The
action is decided from both stores' current rows, not from the compare's
classification, so a key that converged since the compare is left alone and
one that changed again is still repaired correctly.

While the application keeps writing: each batch holds the authoritative rows
it copies (``FOR SHARE``) until the target's batch has committed, and the
target rows it changes (``FOR UPDATE``), so a write in flight through the
proxy lands after the repair of its row instead of being overwritten by a
stale copy.  Locks go authoritative first, target second, as in the proxy.

Keyless tables are repaired as multisets: each differing row gets as many
copies on the target as the authoritative store holds.

Values cross engines through the target column's type (``_repair_values``).
Before any batch changes the target, the rows it will change are appended to
the undo file and fsync'ed (``_repair_undo``); ``undo`` puts them back.  A dry
run (``apply=False``) reads both stores, reports what would change, and writes
nothing: no row on the target and no undo file.

The undo file is never overwritten (repair refuses an existing path), is tied
to its target (undo refuses another store), and can be applied any number of
times: its records state the rows to restore, so an undo interrupted
half-way is finished by running it again.  Undo puts back the rows exactly
as they were before the repair, overwriting whatever was written to those
rows since; sequences advanced by repair are not moved back.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from comparator._repair_apply import Converger, Row
from comparator._repair_report import RepairReport, UndoReport
from comparator._repair_sql import Lock, TableIO
from comparator._repair_undo import UndoFileError, UndoRecord, UndoWriter, read_undo
from comparator._repair_values import to_store
from comparator._schema_catalog import StoreConn, TableInfo, connect, read_tables
from comparator.diff import RowDiff
from comparator.dsn import StoreDsn

log = logging.getLogger(__name__)

__all__ = ["RepairError", "RepairReport", "UndoFileError", "UndoReport", "repair", "undo"]


class RepairError(Exception):
    """Repair cannot proceed (e.g. the tables' columns differ); one line, no secrets."""


# --------------------------------------------------------------------------- repair


async def repair(
    authoritative: StoreDsn,
    target: StoreDsn,
    diffs: list[RowDiff],
    apply: bool,
    undo_path: Path,
    batch_size: int = 500,
) -> RepairReport:
    """Make ``target`` hold ``authoritative``'s rows for every key in ``diffs``."""
    started = time.monotonic()
    report = RepairReport(
        target.redacted(),
        str(undo_path) if apply else None,
        dry_run=not apply,
        authoritative=authoritative.redacted(),
    )
    if apply and undo_path.exists():
        raise UndoFileError(f"undo file {undo_path} already exists; choose another path")
    auth_conn = await connect(authoritative)
    try:
        target_conn = await connect(target)
    except BaseException:
        await auth_conn.close()
        raise
    undo_file: UndoWriter | None = None
    try:
        if apply:
            undo_file = UndoWriter(undo_path, target, authoritative)
        for diff in diffs:
            if diff.missing or diff.extra or diff.mismatched:
                await _repair_table(auth_conn, target_conn, diff, report, undo_file, batch_size)
    except Exception as exc:
        if undo_file is None:
            raise
        # Earlier batches are committed: say where the way back is.
        raise RepairError(
            f"repair stopped ({exc.__class__.__name__}: {exc}); the batches already "
            f"applied can be rolled back with: shadowproxy compare --undo {undo_path}"
        ) from exc
    finally:
        await auth_conn.close()
        await target_conn.close()
        if undo_file is not None:
            undo_file.close()
    report.elapsed = time.monotonic() - started
    return report


async def _repair_table(
    auth_conn: StoreConn,
    target_conn: StoreConn,
    diff: RowDiff,
    report: RepairReport,
    undo_file: UndoWriter | None,
    batch_size: int,
) -> None:
    pair = await _TablePair.open(auth_conn, target_conn, diff)
    counts = report.table(pair.target.table.schema, pair.target.table.name)
    converger = Converger(pair.target, counts, undo_file is not None, undo_file, batch_size)
    if diff.key_columns:
        await _repair_keyed(pair, diff, converger, batch_size)
    else:
        await _repair_keyless(pair, diff, converger)
    if converger.apply and counts.inserted:
        await pair.target.advance_sequences()
    log.info("repair %s: %s", pair.target.relation, vars(counts))


async def _find_table(conn: StoreConn, schema: str, name: str, cross: bool) -> TableInfo:
    """The table on this store.  MariaDB: always in the DSN's database (the diff's
    schema names the authoritative side's database, which may live on the same
    server: never write there).  PostgreSQL: in the diff's schema, else in
    ``public`` (a diff from a MariaDB store names a database).  Names compare
    case-insensitively across engines."""
    if conn.engine == "mysql":
        candidates = [conn.dsn.database]
    else:
        candidates = list(dict.fromkeys(s for s in (schema, "public") if s))
    for candidate in candidates:
        tables = await read_tables(conn, candidate)
        for table_name, info in tables.items():
            if table_name == name or (cross and table_name.lower() == name.lower()):
                return info
    raise RepairError(f"table {schema}.{name} not found on {conn.dsn.redacted()}")


class _TablePair:
    """One table on both stores, its columns matched by name."""

    def __init__(self, auth: TableIO, target: TableIO) -> None:
        self.auth, self.target = auth, target
        # target column i <- authoritative column to_target[i], and back
        self.to_target = [auth.names.index(_pick(auth.names, n)) for n in target.names]
        self.to_auth = [target.names.index(_pick(target.names, n)) for n in auth.names]

    @classmethod
    async def open(cls, auth_conn: StoreConn, target_conn: StoreConn, diff: RowDiff) -> _TablePair:
        cross = auth_conn.engine != target_conn.engine
        auth_t = await _find_table(auth_conn, diff.schema, diff.table, cross)
        target_t = await _find_table(target_conn, diff.schema, diff.table, cross)
        auth_cols = [c.name for c in auth_t.columns if not c.generated]
        target_cols = [c.name for c in target_t.columns if not c.generated]
        if sorted(n.lower() for n in auth_cols) != sorted(n.lower() for n in target_cols):
            raise RepairError(
                f"{diff.table}: the stores' columns differ ({', '.join(auth_cols)} vs "
                f"{', '.join(target_cols)}); align the schemas first (compare --schema)"
            )
        auth_key = [_pick(auth_cols, k) for k in diff.key_columns]
        target_key = [_pick(target_cols, k) for k in diff.key_columns]
        return cls(TableIO(auth_conn, auth_t, auth_key), TableIO(target_conn, target_t, target_key))

    def auth_to_target(self, row: Row) -> Row:
        t = self.target
        return tuple(
            to_store(row[self.to_target[i]], spec, t.engine) for i, spec in enumerate(t.specs)
        )

    def target_to_auth(self, row: Row) -> Row:
        a = self.auth
        return tuple(
            to_store(row[self.to_auth[i]], spec, a.engine) for i, spec in enumerate(a.specs)
        )


def _pick(names: list[str], wanted: str) -> str:
    """``wanted`` among ``names``: exact, else case-insensitive (across engines)."""
    if wanted in names:
        return wanted
    for name in names:
        if name.lower() == wanted.lower():
            return name
    raise RepairError(f"column {wanted!r} not found (columns: {', '.join(names)})")


def _convert_key(key: tuple[Any, ...], io: TableIO) -> Row:
    return tuple(to_store(v, s, io.engine) for v, s in zip(key, io.key_specs, strict=True))


async def _repair_keyed(
    pair: _TablePair, diff: RowDiff, converger: Converger, batch_size: int
) -> None:
    seen: set[Row] = set()
    keys: list[Row] = []
    for key in [*diff.missing, *diff.mismatched, *diff.extra]:
        target_key = _convert_key(tuple(key), pair.target)
        if (k := converger.key_key(target_key)) not in seen:
            seen.add(k)
            keys.append(target_key)
    for start in range(0, len(keys), batch_size):
        batch = keys[start : start + batch_size]
        if not converger.apply:
            await _repair_batch(pair, converger, batch, None)
            continue
        # Hold the authoritative rows (shared) until the target's batch commits: a
        # write in flight through the proxy waits, then mirrors on top of the
        # repaired row instead of being overwritten by a stale copy.  Locks are
        # taken on the authoritative store first, as the proxy does, so the two
        # cannot deadlock across stores.
        async with pair.auth.conn.transaction():
            await _repair_batch(pair, converger, batch, "share")


async def _repair_batch(
    pair: _TablePair, converger: Converger, batch: list[Row], lock: Lock
) -> None:
    # Key columns are in the diff's order on both sides.
    auth_keys = [_convert_key(k, pair.auth) for k in batch]
    auth_rows = await pair.auth.fetch_by_keys(auth_keys, lock)
    wanted = {converger.row_key(row): row for row in map(pair.auth_to_target, auth_rows)}
    await converger.keyed([(k, wanted.get(converger.key_key(k))) for k in batch])


def _whole_row(values: tuple[Any, ...], io: TableIO) -> Row:
    """A keyless diff's tuple (every column, or every written column) in ``io``'s order,
    generated columns left out."""
    if len(values) == len(io.names):
        return tuple(values)
    all_names = [c.name for c in io.table.columns]
    if len(values) != len(all_names):
        raise RepairError(
            f"{io.relation}: a row of {len(values)} values for {len(all_names)} columns"
        )
    by_name = dict(zip(all_names, values, strict=True))
    return tuple(by_name[n] for n in io.names)


async def _repair_keyless(pair: _TablePair, diff: RowDiff, converger: Converger) -> None:
    # Both lists hold whole rows in the authoritative table's column order (the
    # compare reads both stores' rows through one column list).
    rows: dict[Row, Row] = {}  # same_key form -> row in target types and order
    for values in [*diff.missing, *diff.extra]:
        row = pair.auth_to_target(_whole_row(tuple(values), pair.auth))
        rows.setdefault(converger.row_value(row), row)
    desired = []
    for row in rows.values():
        # As many copies as the authoritative store holds now.
        desired.append((row, await pair.auth.count_rows(pair.target_to_auth(row))))
    await converger.keyless(desired)


# --------------------------------------------------------------------------- undo


async def undo(target: StoreDsn, undo_path: Path) -> UndoReport:
    """Put back the target rows recorded in ``undo_path`` (safe to run again)."""
    started = time.monotonic()
    report = UndoReport(target.redacted(), str(undo_path))
    groups: dict[tuple[str, str], list[UndoRecord]] = defaultdict(list)
    for record in read_undo(undo_path, target):
        groups[(record.schema, record.table)].append(record)
    conn = await connect(target)
    try:
        for (schema, name), records in groups.items():
            tables = await read_tables(conn, schema, [name])
            if name not in tables:
                raise RepairError(f"undo: table {schema}.{name} no longer exists on the target")
            io = TableIO(conn, tables[name], list(records[0].key_columns))
            if io.names != list(records[0].columns):
                raise RepairError(
                    f"undo: {schema}.{name} columns changed since the repair "
                    f"({', '.join(records[0].columns)} then, {', '.join(io.names)} now)"
                )
            converger = Converger(io, report.table(schema, name), apply=True)
            await _undo_table(converger, records)
    finally:
        await conn.close()
    report.elapsed = time.monotonic() - started
    return report


async def _undo_table(converger: Converger, records: list[UndoRecord]) -> None:
    io = converger.io
    first: dict[Row, UndoRecord] = {}
    for rec in records:
        # The earliest record of a key holds the state before the whole repair.
        ident = converger.key_key(rec.key) if rec.key_columns else converger.row_value(rec.key)
        first.setdefault(ident, rec)
    if records[0].key_columns:
        desired = [
            (_convert_key(r.key, io), None if r.before is None else _typed(r.before, io))
            for r in first.values()
        ]
        await converger.keyed(desired)
    else:
        await converger.keyless([(_typed(r.key, io), r.before_count) for r in first.values()])


def _typed(row: tuple[Any, ...], io: TableIO) -> Row:
    return tuple(to_store(v, s, io.engine) for v, s in zip(row, io.specs, strict=True))
