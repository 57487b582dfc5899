"""The one reader of configuration: environment (``SHADOW_*``) and an optional TOML file.

Everything is parsed once, up front, into immutable values (``Dsn``, ``HostPort``,
``Settings``); components receive only their own part.  Precedence, highest first:
explicit overrides > environment > TOML file > defaults.

Error messages are one line naming the setting as its environment variable and never
echo the value of a secret (DSNs carry passwords, the admin token is a credential).
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import (
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from proxy.routing import Mode

ENV_PREFIX = "SHADOW_"
MIB = 1024 * 1024

Scheme = Literal["postgresql", "mysql"]
_SCHEMES: dict[str, Scheme] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


class ConfigError(Exception):
    """A configuration problem; ``str()`` is one line, safe to print (no secrets)."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Dsn:
    """A parsed connection URL.  ``repr``/``str`` never show the password."""

    scheme: Scheme
    host: str
    port: int
    user: str = ""
    password: str | None = field(default=None, repr=False)
    database: str = ""
    params: tuple[tuple[str, str], ...] = ()

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (for logs and /status)."""
        userinfo = quote(self.user, safe="")
        if self.password is not None:
            userinfo += ":***"
        if userinfo:
            userinfo += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{urlencode(self.params)}" if self.params else ""
        return (
            f"{self.scheme}://{userinfo}{host}:{self.port}/{quote(self.database, safe='')}{query}"
        )

    def __str__(self) -> str:
        return self.redacted()


def parse_dsn(text: str) -> Dsn:
    """Parse ``scheme://[user[:password]@]host[:port][/database][?k=v&...]``.

    Raises ValueError whose message never contains the password (nor anything after
    the scheme, since a mistyped URL can put the password anywhere).
    """
    text = text.strip()
    if not text:
        raise ValueError("empty")
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise ValueError("expected scheme://host/database")
    canonical = _SCHEMES.get(scheme.lower())
    if canonical is None:
        shown = scheme if scheme.isalnum() and len(scheme) <= 20 else "?"
        raise ValueError(f"unsupported scheme {shown!r} (use postgresql:// or mysql://)")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("invalid host") from None  # urllib's message may echo the input
    try:
        port = parts.port  # None when absent; urllib accepts 0, we do not
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("port must be 1..65535")
    if parts.fragment:
        raise ValueError("unexpected '#' (percent-encode it as %23)")
    if not parts.hostname:
        raise ValueError("missing host")
    database = unquote(parts.path.removeprefix("/"))
    if "/" in database:
        raise ValueError("database name contains '/' (percent-encode special characters)")
    password = unquote(parts.password) if parts.password is not None else None
    params: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":  # libpq allows it here; keep it out of params (and repr)
            if password is not None:
                raise ValueError("password given twice")
            password = value
        else:
            params.append((key, value))
    return Dsn(
        scheme=canonical,
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[canonical],
        user=unquote(parts.username or ""),
        password=password,
        database=database,
        params=tuple(params),
    )


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``host:port`` or ``[ipv6]:port``."""
        text = text.strip()
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
        else:
            host, sep, port_text = text.rpartition(":")
            if ":" in host:
                raise ValueError("IPv6 addresses need brackets: [addr]:port")
        if not sep or not host:
            raise ValueError("expected host:port")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError("port must be 1..65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ------------------------------------------------------------------------- settings

# The TOML file of the current load_settings() call; a context variable because
# settings_customise_sources is a classmethod with no per-call arguments.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("shadowproxy_config_file", default=None)


class _SettingProblem(ValueError):
    """A cross-field error that belongs to one named setting (model errors have no loc)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        enable_decoding=False,  # our values are plain strings, never JSON
        env_ignore_empty=True,  # an empty variable means "unset", as in most deploy tools
    )

    listen: HostPort = HostPort("127.0.0.1", 6543)
    old_dsn: Dsn
    new_dsn: Dsn | None = None
    mode: Mode = Mode.DUAL_WRITE
    admin_listen: HostPort = HostPort("127.0.0.1", 9187)
    admin_token: SecretStr | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # sync: each transaction is applied on the mirror before its authoritative commit
    # is forwarded (lock-step); async: after it, in session order.
    mirror_consistency: Literal["sync", "async"] = "sync"
    # sync: the longest a commit waits for the mirror; then the mirror switches to the
    # journal and the commit goes on (the unit is journaled and logged as a divergence).
    mirror_sync_timeout: float = 5.0
    # Seconds between runs advancing the mirror store's sequences to the authoritative ones.
    sequence_sync_interval: float = 2.0
    # Fraction of autocommit reads also run on the other store in shadow-read modes.
    shadow_read_fraction: float = 0.1
    # Shadow reads in flight (all sessions) before new samples are shed.
    shadow_read_max_inflight: int = 16
    # read-new: the longest an autocommit read waits for the session's own mirrored
    # writes to reach the read store; then the authoritative store serves it (counted).
    read_your_writes_timeout: float = 1.0
    # write-new (and back): the longest a session waits, at its boundary, for the mirror
    # feeding the store that becomes authoritative to catch up; then it stays put.
    authority_switch_timeout: float = 10.0
    # Keys skipped when writes move to a store: its sequences start this many steps
    # ahead, so sessions still writing on the other store cannot draw the same keys.
    sequence_headroom: int = 10_000
    mirror_queue_max_units: int = 10_000
    mirror_queue_max_bytes: int = 64 * MIB
    mirror_connect_timeout: float = 5.0
    # A mirror apply slower than this counts as a lost connection: the unit is journaled.
    mirror_apply_timeout: float = 30.0
    journal_dir: Path = Path("shadowproxy-journal")
    divergence_log: Path = Path("shadowproxy-divergence.jsonl")
    max_message_size: int = 64 * MIB
    # Seconds a client has to finish SSL negotiation, startup and authentication.
    startup_timeout: float = 60.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line (proxy/logs.py); "text": for humans.
    log_format: Literal["text", "json"] = "text"
    control_dsn: Dsn | None = None
    state_file: Path = Path("shadowproxy-state/mode.json")
    # Seconds between control-store polls and heartbeats (LISTEN/NOTIFY is the fast path).
    control_poll_interval: float = 2.0
    # Seconds a clean comparator run stays valid for the write-new / new-only gates.
    control_compare_max_age: float = 3600.0
    # Largest fraction of shadow reads that may differ for a forward step to pass its gate.
    control_shadow_mismatch_max: float = 0.001

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No dotenv or secrets dir: overrides > environment > TOML (defaults come last).
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE.get())
        return init_settings, env_settings, toml

    @field_validator("old_dsn", "new_dsn", "control_dsn", mode="before")
    @classmethod
    def _parse_dsn(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, Dsn):
            return value
        if value is None or (isinstance(value, str) and not value.strip()):
            if info.field_name == "old_dsn":
                raise ValueError("required")
            return None
        if not isinstance(value, str):  # e.g. a TOML table: only URLs go through parse_dsn
            raise ValueError("not a valid DSN: expected a string")
        try:
            return parse_dsn(value)
        except ValueError as exc:
            raise ValueError(f"not a valid DSN: {exc}") from None

    @field_validator("listen", "admin_listen", mode="before")
    @classmethod
    def _parse_host_port(cls, value: object) -> object:
        if isinstance(value, HostPort):
            return value
        if not isinstance(value, str):
            raise ValueError("expected host:port")
        return HostPort.parse(value)

    @field_validator("mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: object) -> object:
        if isinstance(value, Mode):
            return value
        try:
            return Mode(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"must be one of {', '.join(m.value for m in Mode)}") from None

    @field_validator("admin_token", "tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "mirror_queue_max_units",
        "mirror_queue_max_bytes",
        "mirror_connect_timeout",
        "mirror_apply_timeout",
        "mirror_sync_timeout",
        "sequence_sync_interval",
        "shadow_read_max_inflight",
        "read_your_writes_timeout",
        "authority_switch_timeout",
        "startup_timeout",
        "control_poll_interval",
        "control_compare_max_age",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("control_shadow_mismatch_max", "shadow_read_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("must be between 0 and 1")
        return value

    @field_validator("max_message_size")
    @classmethod
    def _at_least_1k(cls, value: int) -> int:
        if value < 1024:
            raise ValueError("must be >= 1024")
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value}: not a readable file")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        # new-only serves everything from the new store: it needs its address too.
        if self.new_dsn is None and self.mode is not Mode.OLD_ONLY:
            raise _SettingProblem("new_dsn", f"required when mode is {self.mode.value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise _SettingProblem(missing, "TLS needs both SHADOW_TLS_CERT and SHADOW_TLS_KEY")
        return self


def env_name(setting: str) -> str:
    """The environment variable that sets ``setting`` (used in every error message)."""
    return f"{ENV_PREFIX}{setting.upper()}"


def _describe(error: Any, config_file: Path | None) -> str:
    """One error of a ValidationError as ``SHADOW_X: problem``, built without the input."""
    loc = error["loc"]
    ctx = error.get("ctx") or {}
    exc = ctx.get("error")
    setting = str(loc[0]) if loc else ""
    if isinstance(exc, _SettingProblem):
        setting = exc.setting
    kind = error["type"]
    if kind == "extra_forbidden":
        where = f"{config_file}: " if config_file is not None else ""
        return f"{where}unknown setting {setting!r}"
    if kind == "missing":
        message = "required"
    elif isinstance(exc, ValueError):
        message = str(exc)
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected', '')}".replace("'", "")
    elif kind in ("int_parsing", "int_from_float", "int_type"):
        message = "must be an integer"
    elif kind in ("float_parsing", "float_type"):
        message = "must be a number"
    else:
        message = error["msg"]  # pydantic's own messages do not include the input
    line = f"{env_name(setting)}: {message}" if setting else message
    return " ".join(line.split())  # guarantee one line


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; any problem becomes a one-line ConfigError."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: no such config file")
        if not os.access(config_file, os.R_OK):
            raise ConfigError(f"{config_file}: config file is not readable")
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e, config_file) for e in exc.errors())) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message is a position ("Expected '=' ... (at line 3, column 7)"), no content.
        raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_file}: cannot read: {exc.__class__.__name__}") from None
    except SettingsError as exc:
        raise ConfigError(f"settings error: {exc}") from None
    finally:
        _CONFIG_FILE.reset(token)
