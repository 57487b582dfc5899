"""The local state file: round trip, atomic replacement, the audit log beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy.control import statefile
from proxy.control.statefile import ModeState, StateFileError, load_state, save_state
from proxy.routing import Mode

STATE = ModeState(Mode.READ_NEW, 7, Mode.SHADOW_READ, 1700000000.5, "sre@host", "step 3")


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path / "nope.json") is None


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "mode.json"  # parents are created
    save_state(path, STATE)
    assert load_state(path) == STATE
    on_disk = json.loads(path.read_text())  # plain JSON an operator can read
    assert on_disk["mode"] == "read-new" and on_disk["epoch"] == 7
    assert on_disk["previous"] == "shadow-read"


def test_replace_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "mode.json"
    save_state(path, STATE)
    save_state(path, ModeState(Mode.DUAL_WRITE, 8, Mode.READ_NEW))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mode.json"]
    assert load_state(path) == ModeState(Mode.DUAL_WRITE, 8, Mode.READ_NEW)


def test_failed_replace_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mode.json"
    save_state(path, STATE)

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_state(path, ModeState(Mode.OLD_ONLY, 8))
    assert load_state(path) == STATE  # never a torn or half-written file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mode.json"]


def test_written_bytes_are_synced_before_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_state(tmp_path / "mode.json", STATE)
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, directory


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"mode": "sideways", "epoch": 1}', b"[]"])
def test_garbage_is_an_error_not_a_default(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mode.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="not a shadowproxy state file"):
        load_state(path)


def test_audit_appends_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "mode.json"
    statefile.append_audit(path, {"epoch": 2, "to_mode": "old-only"})
    statefile.append_audit(path, {"epoch": 3, "to_mode": "dual-write"})
    with (tmp_path / statefile.AUDIT_NAME).open("ab") as f:
        f.write(b'{"epoch": 4, "to_mo')  # a crash in the middle of a write
    assert [e["epoch"] for e in statefile.read_audit(path)] == [2, 3]
