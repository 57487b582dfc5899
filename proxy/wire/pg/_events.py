"""Frontend (client -> server) messages as frozen events.

Every event keeps ``raw``: the exact bytes of the message as the client sent
them, so the relay forwards them untouched.  Only the fields the proxy needs
are decoded; SQL text is decoded with ``surrogateescape`` so it round-trips to
the original bytes whatever the client encoding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StartupMessage:
    raw: bytes
    protocol: int
    params: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.params:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class SSLRequest:
    raw: bytes


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CancelRequest:
    raw: bytes
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class Query:
    raw: bytes
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    raw: bytes
    name: str
    sql: str
    body: bytes  # after the name: query NUL, int16 count, parameter type OIDs


@dataclass(frozen=True, slots=True)
class Bind:
    raw: bytes
    portal: str
    statement: str
    body: bytes  # after the two names: formats, values, result formats


@dataclass(frozen=True, slots=True)
class Execute:
    raw: bytes
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Describe:
    raw: bytes
    target: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    raw: bytes
    target: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Flush:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Terminate:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyData:
    raw: bytes

    @property
    def data(self) -> bytes:
        return self.raw[5:]


@dataclass(frozen=True, slots=True)
class CopyDone:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyFail:
    raw: bytes


@dataclass(frozen=True, slots=True)
class FunctionCall:
    raw: bytes


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """'p': PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse."""

    raw: bytes


FrontendEvent = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Execute
    | Describe
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | AuthResponse
)
