"""Structured logs: the JSON and text formatters, the setting and the serve flag."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy import logs
from proxy.mirror.divergence import DivergenceLog
from proxy.settings import ConfigError, load_settings
from tests.conftest import SHADOWPROXY, free_port


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "proxy.test", "levelname": "INFO", "levelno": 20, "msg": msg, "args": args}
    )
    rec.created = 1764167696.25  # 2025-11-26T14:34:56.250Z
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_record_has_the_base_fields_then_context_then_extras() -> None:
    rec = record("session %s closed", 7, fingerprint="select $1", session=7, mode="dual-write")
    rec.epoch = 3
    rec.tables = ["t"]
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert list(out) == [
        "ts",
        "level",
        "logger",
        "message",
        "session",
        "mode",
        "epoch",
        "fingerprint",
        "tables",
    ]
    assert out["ts"] == "2025-11-26T14:34:56.250Z"
    assert out["level"] == "INFO" and out["logger"] == "proxy.test"
    assert out["message"] == "session 7 closed"
    assert (out["session"], out["mode"], out["epoch"]) == (7, "dual-write", 3)


def test_json_without_context_has_only_the_base_fields() -> None:
    out = json.loads(logs.JsonFormatter().format(record("plain")))
    assert set(out) == {"ts", "level", "logger", "message"}


def test_json_keeps_tracebacks_and_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    rec.path = Path("/tmp/j")
    out = json.loads(logs.JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]
    assert out["path"] == "/tmp/j"


def test_an_extra_never_overwrites_a_base_field() -> None:
    rec = record("real")
    rec.__dict__["level"] = "FAKE"
    out = json.loads(logs.JsonFormatter().format(rec))
    assert out["level"] == "INFO"


def test_text_line_appends_only_the_context_fields() -> None:
    rec = record("divergence", session=4, fingerprint="update t set v=$1", tables=["t"])
    line = logs.TextFormatter().format(rec)
    assert line.endswith("INFO proxy.test divergence [session=4 fingerprint=update t set v=$1]")
    assert "tables" not in line
    assert logs.TextFormatter().format(record("plain")).endswith("INFO proxy.test plain")


def test_context_drops_unset_values() -> None:
    assert logs.context(session=1, epoch=None, kind="rowcount") == {
        "session": 1,
        "kind": "rowcount",
    }


def test_process_context_stamps_mode_and_epoch_unless_the_record_has_its_own() -> None:
    state = {"mode": "dual-write", "epoch": 3}
    logs.bind_process_context(lambda: dict(state))
    try:
        plain, own = record("plain"), record("own", mode="read-new")
        assert logs._PROCESS_CONTEXT.filter(plain) and logs._PROCESS_CONTEXT.filter(own)
        state["epoch"] = 4  # read at each record: a change shows in the next line
        later = record("later")
        logs._PROCESS_CONTEXT.filter(later)
    finally:
        logs.bind_process_context(None)
    formatter = logs.JsonFormatter()
    assert json.loads(formatter.format(plain))["epoch"] == 3
    assert json.loads(formatter.format(own))["mode"] == "read-new"
    assert json.loads(formatter.format(later))["epoch"] == 4
    unbound = record("unbound")
    logs._PROCESS_CONTEXT.filter(unbound)
    assert "mode" not in json.loads(formatter.format(unbound))


def test_divergence_is_its_own_structured_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    divergences = DivergenceLog(tmp_path / "d.jsonl")
    with caplog.at_level(logging.WARNING, logger="proxy.mirror.divergence"):
        divergences.record(
            "rowcount",
            session=9,
            fingerprint="update t set v = $1",
            tables=["t"],
            old=["UPDATE 1"],
            new=["UPDATE 2"],
            new_error={"message": "may hold a literal"},
        )
    divergences.close()
    [rec] = caplog.records
    out = orjson.loads(logs.JsonFormatter().format(rec))
    assert out["event"] == "divergence" and out["kind"] == "rowcount"
    assert out["session"] == 9 and out["fingerprint"] == "update t set v = $1"
    assert out["old"] == ["UPDATE 1"] and out["new"] == ["UPDATE 2"]
    assert "new_error" not in out and "may hold a literal" not in json.dumps(out)
    # The divergence log itself still has every field (it is the repair record).
    [line] = (tmp_path / "d.jsonl").read_text().splitlines()
    assert json.loads(line)["new_error"] == {"message": "may hold a literal"}


def test_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_OLD_DSN", "postgresql://u@127.0.0.1:5432/db")
    monkeypatch.setenv("SHADOW_MODE", "old-only")
    assert load_settings().log_format == "text"
    monkeypatch.setenv("SHADOW_LOG_FORMAT", " JSON ")
    assert load_settings().log_format == "json"
    monkeypatch.setenv("SHADOW_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="SHADOW_LOG_FORMAT: must be one of text or json"):
        load_settings()


def test_serve_log_format_flag_beats_the_environment(tmp_path: Path) -> None:
    """`serve --log-format json` with SHADOW_LOG_FORMAT=text: the first line is JSON."""
    env = {
        "PATH": "/usr/bin:/bin",
        "SHADOW_OLD_DSN": "postgresql://postgres@127.0.0.1:5432/postgres",
        "SHADOW_MODE": "old-only",
        "SHADOW_LOG_FORMAT": "text",
        "SHADOW_LISTEN": f"127.0.0.1:{free_port()}",
        "SHADOW_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "SHADOW_JOURNAL_DIR": str(tmp_path / "journal"),
        "SHADOW_DIVERGENCE_LOG": str(tmp_path / "d.jsonl"),
        "SHADOW_STATE_FILE": str(tmp_path / "state" / "mode.json"),
    }
    proc = subprocess.Popen(
        [SHADOWPROXY, "serve", "--log-format", "json"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert first["level"] == "INFO" and first["logger"].startswith("proxy.")
    assert "listening" in first["message"] or first["message"]
