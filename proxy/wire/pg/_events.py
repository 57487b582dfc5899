"""Frontend (client -> server) messages as frozen events.

Events are NamedTuples: immutable like frozen dataclasses, but built by
``tuple.__new__`` -- several times cheaper on the relay's hot path, where a
client sends five of them per pgbench statement.  The parser calls
``tuple.__new__`` itself: compiled (setup.py), it would otherwise call back
into the interpreter for the NamedTuple's own ``__new__``.  Every event keeps ``raw``: the exact bytes of the message as the client sent
them, so the relay forwards them untouched.  Only the fields the proxy needs
are decoded; SQL text is decoded with ``surrogateescape`` so it round-trips to
the original bytes whatever the client encoding.
"""

from __future__ import annotations

from typing import NamedTuple


class StartupMessage(NamedTuple):
    raw: bytes
    protocol: int
    params: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.params:
            if k == key:
                return v
        return default


class SSLRequest(NamedTuple):
    raw: bytes


class GSSENCRequest(NamedTuple):
    raw: bytes


class CancelRequest(NamedTuple):
    raw: bytes
    process_id: int
    secret_key: bytes


class Query(NamedTuple):
    raw: bytes
    sql: str


class Parse(NamedTuple):
    raw: bytes
    name: str
    sql: str
    body: bytes  # after the name: query NUL, int16 count, parameter type OIDs


class Bind(NamedTuple):
    raw: bytes
    portal: str
    statement: str
    body: bytes  # after the two names: formats, values, result formats


class Execute(NamedTuple):
    raw: bytes
    portal: str
    max_rows: int


class Describe(NamedTuple):
    raw: bytes
    target: str  # "S" statement or "P" portal
    name: str


class Close(NamedTuple):
    raw: bytes
    target: str
    name: str


class Sync(NamedTuple):
    raw: bytes


class Flush(NamedTuple):
    raw: bytes


class Terminate(NamedTuple):
    raw: bytes


class CopyData(NamedTuple):
    raw: bytes

    @property
    def data(self) -> bytes:
        return self.raw[5:]


class CopyDone(NamedTuple):
    raw: bytes


class CopyFail(NamedTuple):
    raw: bytes


class FunctionCall(NamedTuple):
    raw: bytes


class AuthResponse(NamedTuple):
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
