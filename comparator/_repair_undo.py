"""The undo file: what the target held before repair touched it, written first.

JSON lines (orjson).  The first line names the target store; then, before
each batch is written to the target, one line per row the batch will change,
fsync'ed before the batch's transaction begins:

    {"kind": "header", "version": 1, "target": {...}, "authoritative": "...", "created": ...}
    {"kind": "row", "schema": s, "table": t, "columns": [...], "key_columns": [...],
     "key": [...], "before": [...] | "absent"}
    {"kind": "rows", "schema": s, "table": t, "columns": [...], "row": [...],
     "before_count": n}                                     (keyless tables)

Every record states what to restore, not what was done: "this key held this
row (or nothing)", "this row existed n times".  Undoing is therefore the
same convergence as repair, towards the recorded state, and can run any
number of times: after a repair that stopped half-way (records of batches
never applied restore what is already there) and after an undo that
stopped half-way (run it again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from comparator._repair_values import decode, encode
from comparator.dsn import StoreDsn

VERSION = 1


class UndoFileError(Exception):
    """The undo file cannot be used (missing, foreign, damaged); one line, no secrets."""


def target_identity(dsn: StoreDsn) -> dict[str, Any]:
    return {"engine": dsn.engine, "host": dsn.host, "port": dsn.port, "database": dsn.database}


class UndoWriter:
    """Appends records; ``flush`` makes everything written so far durable."""

    def __init__(self, path: Path, target: StoreDsn, authoritative: StoreDsn) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Never overwrite: an earlier undo file may be the only way back.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except FileExistsError:
            raise UndoFileError(f"undo file {path} already exists; choose another path") from None
        self._pending: list[bytes] = []
        self.add(
            {
                "kind": "header",
                "version": VERSION,
                "created": time.time(),
                "target": target_identity(target),
                "authoritative": authoritative.redacted(),
            }
        )
        self.flush()

    def add(self, record: dict[str, Any]) -> None:
        self._pending.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if self._pending:
            os.write(self._fd, b"".join(self._pending))
            self._pending.clear()
        os.fsync(self._fd)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def row_record(
    schema: str, table: str, columns: list[str], key_columns: list[str], key: Any, before: Any
) -> dict[str, Any]:
    return {
        "kind": "row",
        "schema": schema,
        "table": table,
        "columns": columns,
        "key_columns": key_columns,
        "key": encode(list(key)),
        "before": "absent" if before is None else encode(list(before)),
    }


def rows_record(
    schema: str, table: str, columns: list[str], row: Any, before_count: int
) -> dict[str, Any]:
    return {
        "kind": "rows",
        "schema": schema,
        "table": table,
        "columns": columns,
        "row": encode(list(row)),
        "before_count": before_count,
    }


@dataclass(frozen=True)
class UndoRecord:
    schema: str
    table: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]  # empty for a keyless table
    key: tuple[Any, ...]  # the key, or the whole row when keyless
    before: tuple[Any, ...] | None  # keyed: the row as it was, None when absent
    before_count: int = 0  # keyless: how many copies of the row there were


def read_undo(path: Path, target: StoreDsn) -> Iterator[UndoRecord]:
    """The records of ``path``, after checking it was written for ``target``."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise UndoFileError(f"cannot read undo file {path}: {e.strerror}") from None
    if not lines:
        raise UndoFileError(f"undo file {path} is empty")
    header = _load(path, 1, lines[0])
    if header.get("kind") != "header" or header.get("version") != VERSION:
        raise UndoFileError(f"{path} is not a shadowproxy undo file (version {VERSION})")
    if header["target"] != target_identity(target):
        t = header["target"]
        raise UndoFileError(
            f"undo file {path} was written for {t['engine']}://{t['host']}:{t['port']}/"
            f"{t['database']}, not for {target.redacted()}"
        )
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = _load(path, number, line)
        except UndoFileError:
            if number == len(lines):
                # A torn last line (a crash while appending): records are durable
                # before their batch starts, so that batch never touched the target.
                return
            raise
        yield _record(record)


def _load(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UndoFileError(f"undo file {path}: line {number} is not valid JSON") from None
    if not isinstance(value, dict):
        raise UndoFileError(f"undo file {path}: line {number} is not a record")
    return value


def _record(rec: dict[str, Any]) -> UndoRecord:
    common = (rec["schema"], rec["table"], tuple(rec["columns"]))
    if rec["kind"] == "row":
        before = None if rec["before"] == "absent" else tuple(decode(rec["before"]))
        return UndoRecord(*common, tuple(rec["key_columns"]), tuple(decode(rec["key"])), before)
    return UndoRecord(*common, (), tuple(decode(rec["row"])), None, int(rec["before_count"]))
