"""The local state file: the mode a single instance runs, kept across restarts.

Without a control store the state file is the source of truth for one instance;
with one, it is only a cache of the last mode the store announced, so that an
instance restarted while the store is unreachable resumes the fleet's mode
instead of ``SHADOW_MODE`` (fail static across a restart).

Writes are atomic: a temporary file in the same directory is written and
fsync'd, then renamed over the old one, then the directory is fsync'd.  A crash
leaves either the old content or the new one, never a torn file.  Beside it,
``mode-audit.jsonl`` keeps the history of local changes (one JSON line each).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.routing import Mode

AUDIT_NAME = "mode-audit.jsonl"


class StateFileError(Exception):
    """The state file exists but cannot be used (unreadable or not ours)."""


@dataclass(frozen=True, slots=True)
class ModeState:
    """The mode row: what every instance should run, and how it got there."""

    mode: Mode
    epoch: int
    previous: Mode | None = None
    changed_at: float = 0.0  # unix seconds
    changed_by: str = ""
    reason: str = ""
    # State file only: the SHADOW_MODE the instance was configured with when this was
    # written, so a restart can tell "configuration unchanged" from "operator edited it".
    configured: Mode | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode.value,
            "epoch": self.epoch,
            "previous": self.previous.value if self.previous else None,
            "changed_at": self.changed_at,
            "changed_by": self.changed_by,
            "reason": self.reason,
        }
        if self.configured is not None:
            out["configured"] = self.configured.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModeState:
        previous, configured = data.get("previous"), data.get("configured")
        return cls(
            mode=Mode(data["mode"]),
            epoch=int(data["epoch"]),
            previous=Mode(previous) if previous else None,
            changed_at=float(data.get("changed_at") or 0.0),
            changed_by=str(data.get("changed_by") or ""),
            reason=str(data.get("reason") or ""),
            configured=Mode(configured) if configured else None,
        )


def load_state(path: Path) -> ModeState | None:
    """The saved state, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return ModeState.from_json(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError):
        raise StateFileError(f"{path}: not a shadowproxy state file") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(path: Path, state: ModeState) -> None:
    """Replace the state file atomically (tmp + fsync + rename + fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def append_audit(path: Path, entry: dict[str, Any]) -> None:
    """Append one change to the local audit log beside the state file (fsync'd)."""
    audit = path.with_name(AUDIT_NAME)
    audit.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_audit(path: Path, limit: int = 100) -> list[dict[str, Any]]:
    """The last ``limit`` local changes, oldest first."""
    audit = path.with_name(AUDIT_NAME)
    try:
        lines = audit.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines[-limit:]:
        with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line after a crash
            out.append(orjson.loads(line))
    return out
