"""Store DSNs for the comparator: URLs parsed once, up front, into immutable values.

``postgresql://user:password@host:port/db`` and ``mysql://`` (``mariadb://`` is the same
engine) are accepted. Errors name the problem in one line and never echo the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

Engine = Literal["postgresql", "mysql"]

_SCHEMES: dict[str, Engine] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DEFAULT_PORTS: dict[Engine, int] = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True)
class StoreDsn:
    """One store's connection parameters."""

    engine: Engine
    host: str
    port: int
    user: str
    password: str | None
    database: str

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (safe for logs and reports)."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":***"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.engine}://{auth}@{host}:{self.port}/{quote(self.database, safe='')}"

    def __repr__(self) -> str:
        return f"StoreDsn({self.redacted()})"


def parse_store_dsn(url: str) -> StoreDsn:
    """Parse a store URL; raise ValueError with one clear line (never the password)."""
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise ValueError("store DSN must be a URL such as postgresql://user@host:5432/db")
    engine = _SCHEMES.get(scheme.lower())
    if engine is None:
        raise ValueError(
            f"unsupported DSN scheme {scheme!r}: use postgresql://, mysql:// or mariadb://"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{engine} DSN has an invalid host or port") from None
    if not parts.hostname:
        raise ValueError(f"{engine} DSN has no host")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"{engine} DSN must name exactly one database after the host")
    user = unquote(parts.username) if parts.username else _default_user(engine)
    password = unquote(parts.password) if parts.password is not None else None
    return StoreDsn(
        engine=engine,
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[engine],
        user=user,
        password=password,
        database=database,
    )


def _default_user(engine: Engine) -> str:
    return "postgres" if engine == "postgresql" else "root"
