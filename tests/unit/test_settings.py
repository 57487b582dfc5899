"""Settings: environment and TOML parsing, precedence, one-line secret-free errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from proxy.cli import main
from proxy.routing import Mode
from proxy.settings import ConfigError, Dsn, HostPort, Settings, load_settings, parse_dsn

SECRET = "s3cr#t/pw"  # percent-encoded below; must never leak into any message
OLD = "postgresql://app:s3cr%23t%2Fpw@old.db:5433/shop"
NEW = "postgresql://app:s3cr%23t%2Fpw@new.db/shop"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own SHADOW_* variables must not leak into the tests.
    for name in list(os.environ):
        if name.startswith("SHADOW_"):
            monkeypatch.delenv(name)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shadowproxy.toml"
    path.write_text(text)
    return path


def config_error(config_file: Path | None = None, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file, **overrides)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message and "s3cr" not in message
    return message


# ------------------------------------------------------------------------- Dsn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (OLD, Dsn("postgresql", "old.db", 5433, "app", SECRET, "shop")),
        ("postgres://u@h", Dsn("postgresql", "h", 5432, "u", None, "")),
        ("mysql://root:pw@db/app", Dsn("mysql", "db", 3306, "root", "pw", "app")),
        ("mariadb://root@db:3307", Dsn("mysql", "db", 3307, "root", None, "")),
        ("POSTGRESQL://u:@H/d", Dsn("postgresql", "h", 5432, "u", "", "d")),
        (
            "postgresql://a%40b:p%3Aw@[::1]:6000/my%20db",
            Dsn("postgresql", "::1", 6000, "a@b", "p:w", "my db"),
        ),
        (
            "postgresql://u@h/d?sslmode=require&application_name=x",
            Dsn(
                "postgresql",
                "h",
                5432,
                "u",
                None,
                "d",
                (("sslmode", "require"), ("application_name", "x")),
            ),
        ),
        (
            "postgresql://u@h/d?password=pw&sslmode=off",
            Dsn("postgresql", "h", 5432, "u", "pw", "d", (("sslmode", "off"),)),
        ),
    ],
)
def test_parse_dsn(text: str, expected: Dsn) -> None:
    assert parse_dsn(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("http://u:s3cr%23t%2Fpw@h/d", "unsupported scheme 'http'"),
        ("app:s3cr#t/pw@old.db/shop", "expected scheme://"),
        ("s3cr#t/pw://h", "unsupported scheme '?'"),
        ("postgresql://u:s3cr%23t%2Fpw@h:99999/d", "port must be 1..65535"),
        ("postgresql://u:s3cr%23t%2Fpw@h:abc/d", "port must be 1..65535"),
        ("postgresql://u:s3cr#t/pw@h/d", "port must be 1..65535"),  # unencoded '#' and '/'
        ("postgresql://u:s3cr%23t%2Fpw@/d", "missing host"),
        ("postgresql://u:s3cr%23t%2Fpw@[::1/d", "invalid host"),
        ("postgresql://u:s3cr%23t%2Fpw@h/a/b", "database name contains '/'"),
        ("postgresql://u:pw@h/d?password=s3cr", "password given twice"),
    ],
)
def test_parse_dsn_rejects_without_leaking(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(text)
    assert message in str(info.value)
    assert "s3cr" not in str(info.value)


def test_dsn_repr_and_redacted_hide_password() -> None:
    dsn = parse_dsn(OLD + "?sslmode=require")
    for text in (repr(dsn), str(dsn), dsn.redacted()):
        assert "s3cr" not in text
    assert dsn.redacted() == "postgresql://app:***@old.db:5433/shop?sslmode=require"
    assert parse_dsn("mysql://root@[::1]/app").redacted() == "mysql://root@[::1]:3306/app"
    assert parse_dsn("mysql://h").redacted() == "mysql://h:3306/"
    assert parse_dsn(OLD).password == SECRET


# -------------------------------------------------------------------- HostPort


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6543", HostPort("127.0.0.1", 6543)),
        ("localhost:1", HostPort("localhost", 1)),
        ("0.0.0.0:65535", HostPort("0.0.0.0", 65535)),
        ("[::1]:9187", HostPort("::1", 9187)),
        (" [::]:80 ", HostPort("::", 80)),
    ],
)
def test_host_port(text: str, expected: HostPort) -> None:
    assert HostPort.parse(text) == expected
    assert HostPort.parse(str(expected)) == expected  # str() round-trips


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "expected host:port"),
        (":6543", "expected host:port"),
        ("[::1]", "expected host:port"),
        ("h:0", "port must be 1..65535"),
        ("h:65536", "port must be 1..65535"),
        ("h:-1", "port must be 1..65535"),
        ("h:http", "port must be 1..65535"),
        ("::1:80", "need brackets"),
    ],
)
def test_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HostPort.parse(text)


# -------------------------------------------------------------------- Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_OLD_DSN", OLD)
    monkeypatch.setenv("SHADOW_NEW_DSN", NEW)
    s = load_settings()
    assert s.listen == HostPort("127.0.0.1", 6543)
    assert s.admin_listen == HostPort("127.0.0.1", 9187)
    assert s.mode is Mode.DUAL_WRITE
    assert s.old_dsn == parse_dsn(OLD) and s.new_dsn == parse_dsn(NEW)
    assert (s.admin_token, s.tls_cert, s.tls_key, s.control_dsn) == (None, None, None, None)
    assert (s.mirror_consistency, s.mirror_queue_max_units) == ("sync", 10_000)
    assert s.mirror_queue_max_bytes == s.max_message_size == 64 * 1024 * 1024
    assert s.mirror_connect_timeout == 5.0
    assert s.journal_dir == Path("shadowproxy-journal")
    assert s.divergence_log == Path("shadowproxy-divergence.jsonl")
    assert s.state_file == Path("shadowproxy-state/mode.json")
    assert s.log_level == "INFO"
    assert "s3cr" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("SHADOW_LISTEN", "0.0.0.0:5432", "listen", HostPort("0.0.0.0", 5432)),
        ("SHADOW_ADMIN_LISTEN", "[::1]:9000", "admin_listen", HostPort("::1", 9000)),
        ("SHADOW_MODE", "shadow-read", "mode", Mode.SHADOW_READ),
        ("SHADOW_MODE", "Read-New", "mode", Mode.READ_NEW),
        ("SHADOW_MIRROR_QUEUE_MAX_UNITS", "5", "mirror_queue_max_units", 5),
        ("SHADOW_MIRROR_QUEUE_MAX_BYTES", "4096", "mirror_queue_max_bytes", 4096),
        ("SHADOW_MIRROR_CONNECT_TIMEOUT", "0.5", "mirror_connect_timeout", 0.5),
        ("SHADOW_MAX_MESSAGE_SIZE", "1024", "max_message_size", 1024),
        ("SHADOW_JOURNAL_DIR", "/var/lib/j", "journal_dir", Path("/var/lib/j")),
        ("SHADOW_DIVERGENCE_LOG", "d.jsonl", "divergence_log", Path("d.jsonl")),
        ("SHADOW_STATE_FILE", "s/m.json", "state_file", Path("s/m.json")),
        ("SHADOW_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        (
            "SHADOW_CONTROL_DSN",
            "postgres://c@ctl/control",
            "control_dsn",
            Dsn("postgresql", "ctl", 5432, "c", None, "control"),
        ),
        ("SHADOW_NEW_DSN", "", "new_dsn", parse_dsn(NEW)),  # empty means unset: TOML value stays
        ("shadow_mode", "new-only", "mode", Mode.NEW_ONLY),  # names are case-insensitive
    ],
)
def test_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    value: str,
    attribute: str,
    expected: object,
) -> None:
    config = write_toml(tmp_path, f'old_dsn = "{OLD}"\nnew_dsn = "{NEW}"\n')
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(config), attribute) == expected


def test_admin_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_OLD_DSN", OLD)
    monkeypatch.setenv("SHADOW_MODE", "old-only")
    monkeypatch.setenv("SHADOW_ADMIN_TOKEN", "tok-s3cr")
    s = load_settings()
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "tok-s3cr"
    assert "tok-s3cr" not in repr(s)


def test_precedence_overrides_env_toml_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_toml(
        tmp_path,
        f'old_dsn = "{OLD}"\nnew_dsn = "{NEW}"\nlisten = "10.0.0.1:1111"\n'
        'admin_listen = "10.0.0.1:2222"\nmode = "shadow-read"\nmirror_queue_max_units = 7\n',
    )
    monkeypatch.setenv("SHADOW_LISTEN", "10.0.0.2:3333")
    monkeypatch.setenv("SHADOW_MODE", "read-new")
    s = load_settings(config, mode=Mode.WRITE_NEW)
    assert s.mode is Mode.WRITE_NEW  # override beats environment and file
    assert s.listen == HostPort("10.0.0.2", 3333)  # environment beats file
    assert s.admin_listen == HostPort("10.0.0.1", 2222)  # file beats default
    assert s.mirror_queue_max_units == 7  # TOML integers stay integers
    assert s.journal_dir == Path("shadowproxy-journal")  # default


def test_settings_are_frozen() -> None:
    s = load_settings(old_dsn=OLD, mode="old-only")
    with pytest.raises(ValidationError):
        s.mode = Mode.NEW_ONLY  # type: ignore[misc]
    assert isinstance(s, Settings)


def test_new_dsn_optional_in_old_only() -> None:
    assert load_settings(old_dsn=OLD, mode="old-only").new_dsn is None


def test_new_dsn_required_in_new_only() -> None:
    assert config_error(old_dsn=OLD, mode="new-only") == (
        "SHADOW_NEW_DSN: required when mode is new-only"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SHADOW_OLD_DSN": None}, "SHADOW_OLD_DSN: required"),
        (
            {"SHADOW_OLD_DSN": "http://app:s3cr%23t%2Fpw@h/d"},
            "SHADOW_OLD_DSN: not a valid DSN: unsupported scheme 'http'",
        ),
        (
            {"SHADOW_OLD_DSN": "app:s3cr#t/pw@old.db/shop"},
            "SHADOW_OLD_DSN: not a valid DSN: expected scheme://",
        ),
        (
            {"SHADOW_OLD_DSN": "postgresql://app:s3cr%23t%2Fpw@h:0/d"},
            "SHADOW_OLD_DSN: not a valid DSN: port must be 1..65535",
        ),
        ({"SHADOW_NEW_DSN": None}, "SHADOW_NEW_DSN: required when mode is dual-write"),
        (
            {"SHADOW_NEW_DSN": None, "SHADOW_MODE": "write-new"},
            "SHADOW_NEW_DSN: required when mode is write-new",
        ),
        (
            {"SHADOW_NEW_DSN": "ftp://x:s3cr%23t%2Fpw@h"},
            "SHADOW_NEW_DSN: not a valid DSN: unsupported scheme 'ftp'",
        ),
        (
            {"SHADOW_CONTROL_DSN": "postgresql://x:s3cr%23t%2Fpw@"},
            "SHADOW_CONTROL_DSN: not a valid DSN: missing host",
        ),
        ({"SHADOW_LISTEN": "127.0.0.1:70000"}, "SHADOW_LISTEN: port must be 1..65535"),
        ({"SHADOW_ADMIN_LISTEN": "nohost"}, "SHADOW_ADMIN_LISTEN: expected host:port"),
        (
            {"SHADOW_MODE": "sideways"},
            "SHADOW_MODE: must be one of old-only, dual-write, shadow-read, read-new, write-new, new-only",
        ),
        (
            {"SHADOW_MIRROR_CONSISTENCY": "lockstep"},
            "SHADOW_MIRROR_CONSISTENCY: must be one of sync or async",
        ),
        ({"SHADOW_MIRROR_SYNC_TIMEOUT": "0"}, "SHADOW_MIRROR_SYNC_TIMEOUT: must be > 0"),
        ({"SHADOW_MIRROR_QUEUE_MAX_UNITS": "0"}, "SHADOW_MIRROR_QUEUE_MAX_UNITS: must be > 0"),
        (
            {"SHADOW_MIRROR_QUEUE_MAX_UNITS": "lots"},
            "SHADOW_MIRROR_QUEUE_MAX_UNITS: must be an integer",
        ),
        ({"SHADOW_MIRROR_QUEUE_MAX_BYTES": "-1"}, "SHADOW_MIRROR_QUEUE_MAX_BYTES: must be > 0"),
        (
            {"SHADOW_MIRROR_CONNECT_TIMEOUT": "soon"},
            "SHADOW_MIRROR_CONNECT_TIMEOUT: must be a number",
        ),
        ({"SHADOW_MAX_MESSAGE_SIZE": "1023"}, "SHADOW_MAX_MESSAGE_SIZE: must be >= 1024"),
        (
            {"SHADOW_LOG_LEVEL": "trace"},
            "SHADOW_LOG_LEVEL: must be one of DEBUG, INFO, WARNING or ERROR",
        ),
        (
            {"SHADOW_TLS_CERT": "/nonexistent/cert.pem"},
            "SHADOW_TLS_CERT: /nonexistent/cert.pem: not a readable file",
        ),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None], expected: str
) -> None:
    # Start from a valid configuration; None in the row unsets a variable.
    for name, value in {"SHADOW_OLD_DSN": OLD, "SHADOW_NEW_DSN": NEW, **env}.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    assert config_error().startswith(expected)


def test_several_problems_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_OLD_DSN", "http://app:s3cr%23t%2Fpw@h/d")
    monkeypatch.setenv("SHADOW_LISTEN", "h:0")
    message = config_error()
    assert "SHADOW_OLD_DSN: " in message and "SHADOW_LISTEN: " in message


def test_admin_token_value_never_echoed() -> None:
    message = config_error(old_dsn=OLD, mode="old-only", admin_token=12345)
    assert message.startswith("SHADOW_ADMIN_TOKEN: ") and "12345" not in message


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        (True, False, "SHADOW_TLS_KEY: TLS needs both"),
        (False, True, "SHADOW_TLS_CERT: TLS needs both"),
        (True, "missing", "SHADOW_TLS_KEY: "),
    ],
)
def test_tls_pair(tmp_path: Path, cert: bool, key: bool | str, expected: str) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    overrides: dict[str, Any] = {"old_dsn": OLD, "mode": "old-only"}
    if cert:
        overrides["tls_cert"] = tmp_path / "cert.pem"
    if key:
        overrides["tls_key"] = tmp_path / ("absent.pem" if key == "missing" else "key.pem")
    assert config_error(**overrides).startswith(expected)


def test_tls_pair_accepted(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    s = load_settings(
        old_dsn=OLD,
        mode="old-only",
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=tmp_path / "key.pem",
    )
    assert s.tls_cert == tmp_path / "cert.pem" and s.tls_key == tmp_path / "key.pem"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (None, "no such config file"),
        ('old_dsn = "unterminated\n', "not valid TOML"),
        (f'old_dsn = "{OLD}"\nmode = "old-only"\nbogus = 1\n', "unknown setting 'bogus'"),
        (
            'old_dsn = {host = "h"}\nmode = "old-only"\n',
            "SHADOW_OLD_DSN: not a valid DSN: expected a string",
        ),
        ('old_dsn = "http://app:s3cr%23t%2Fpw@h/d"\n', "SHADOW_OLD_DSN: not a valid DSN"),
        (
            f'old_dsn = "{OLD}"\nmode = "old-only"\nlisten = 6543\n',
            "SHADOW_LISTEN: expected host:port",
        ),
    ],
)
def test_config_file_errors(tmp_path: Path, toml: str | None, expected: str) -> None:
    config = tmp_path / "absent.toml" if toml is None else write_toml(tmp_path, toml)
    message = config_error(config)
    assert expected in message
    if toml is None or "TOML" in expected or "unknown" in expected:
        assert str(config) in message  # file-level problems name the file


# ------------------------------------------------------------------------- cli


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "SHADOW_OLD_DSN: required"),
        ({"SHADOW_OLD_DSN": "http://app:s3cr%23t%2Fpw@h/d"}, "SHADOW_OLD_DSN: not a valid DSN"),
        (
            {"SHADOW_OLD_DSN": OLD, "SHADOW_NEW_DSN": NEW, "SHADOW_LISTEN": "h:0"},
            "SHADOW_LISTEN: port",
        ),
    ],
)
def test_cli_serve_config_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"shadowproxy: config error: {expected}")
    assert "s3cr" not in err


def test_cli_serve_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err == f"shadowproxy: config error: {tmp_path / 'nope.toml'}: no such config file\n"


def test_cli_mode_without_control_store_asks_the_admin_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No SHADOW_CONTROL_DSN: the mode lives in the instance, asked through its admin API.
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    toml = f'old_dsn = "{OLD}"\nnew_dsn = "{NEW}"\nadmin_listen = "127.0.0.1:{port}"\n'
    config = write_toml(tmp_path, toml)
    assert main(["mode", "--config", str(config)]) == 1
    assert f"admin API at http://127.0.0.1:{port} unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code"), [(["--version"], 0), ([], 2), (["journal"], 2), (["nope"], 2)]
)
def test_cli_usage(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> None:
    assert main(argv) == code
    if code == 0:
        assert capsys.readouterr().out.startswith("shadowproxy ")


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_journal_status(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    from proxy.mirror.journal import Journal

    Journal(tmp_path / "journal").close()  # an empty journal
    monkeypatch.setenv("SHADOW_OLD_DSN", OLD)
    monkeypatch.setenv("SHADOW_MODE", "old-only")
    monkeypatch.setenv("SHADOW_JOURNAL_DIR", str(tmp_path / "journal"))
    assert main(["journal", "status", *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    if as_json:
        assert orjson.loads(out)["pending_units"] == 0
    else:
        assert "pending_units: 0\n" in out
        assert all(": " in line for line in out.splitlines())


def test_cli_journal_status_without_journal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHADOW_OLD_DSN", OLD)
    monkeypatch.setenv("SHADOW_MODE", "old-only")
    monkeypatch.setenv("SHADOW_JOURNAL_DIR", str(tmp_path / "absent"))
    assert main(["journal", "status"]) == 1
    assert "no journal at" in capsys.readouterr().err
