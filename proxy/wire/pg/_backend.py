"""Server -> client stream scanner.

How this works: the relay forwards every chunk from the server as it arrives;
the scanner only walks message headers to keep track of boundaries and hands
back the few messages the proxy must understand (ReadyForQuery, CommandComplete,
ErrorResponse, the extended-protocol acknowledgements, COPY switches...).
DataRow and other bulk messages are skipped by length without being copied,
including when they straddle chunks, so a large result costs one header read
per row and no Python object.

``feed`` returns a list of ``(type_byte, body)`` pairs; ``body`` is ``b""`` for
acknowledgement-only types whose content the proxy does not need.
"""

from __future__ import annotations

from struct import Struct, unpack_from
from typing import Final

from proxy.wire.pg._errors import ProtocolError

# Types whose body the proxy reads.
_WITH_BODY: Final = frozenset(b"ZCEKSR")
# Types the proxy needs to see, but not their body.
_TYPE_ONLY: Final = frozenset(b"123nsITtGHWcV")
_TRACKED: Final = _WITH_BODY | _TYPE_ONLY
_MAX_BODY: Final = 1 << 30
_int32: Final = Struct("!i").unpack_from
# What the relay needs when it does not pair requests with answers (no mirroring):
# ReadyForQuery and CommandComplete with their bodies, PortalSuspended and
# ErrorResponse as types only (a specialised loop, see ``_ready_only``).
BOUNDARIES = frozenset(b"ZCsE")


class BackendScanner:
    __slots__ = ("_buf", "_skip", "tracked", "with_body")

    def __init__(self, tracked: frozenset[int] = _TRACKED) -> None:
        self._buf = b""
        self._skip = 0  # bytes of an untracked message still to pass over
        self.tracked = tracked  # may change between messages (mode changes)
        self.with_body = _WITH_BODY  # tracked types whose body is handed back

    def digest_rows(self, on: bool) -> None:
        """Also hand back RowDescription and DataRow, with their bodies (a sampled
        read's answer is digested on its way, see relay/shadow.py), or stop."""
        self.tracked = ROWS if on else OUTCOMES
        self.with_body = _ROWS_BODY if on else _WITH_BODY

    def take_state(self) -> tuple[bytes, int]:
        """Hand over (the partial message kept, the bytes of a message still to
        pass over) to a reader that takes the stream from here; reset."""
        state = (self._buf, self._skip)
        self._buf = b""
        self._skip = 0
        return state

    def give_state(self, buf: bytes, skip: int) -> None:
        """Take the stream back mid-message (see ``take_state``)."""
        self._buf = buf
        self._skip = skip

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return out
            data = data[skip:]
            self._skip = 0
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        if self.tracked is BOUNDARIES:
            return self._ready_only(buf, n, out)
        tracked = self.tracked
        with_body = self.with_body
        int32 = _int32
        while n - pos >= 5:
            t = buf[pos]
            length = int32(buf, pos + 1)[0]
            if length < 4 or length > _MAX_BODY:
                raise ProtocolError(f"invalid backend message length {length}")
            end = pos + 1 + length
            if t not in tracked:
                if end > n:
                    self._skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if t in with_body:
                if end > n:
                    break
                out.append((t, buf[pos + 5 : end]))
            else:
                if end > n:  # only the type matters: report it, skip the rest
                    out.append((t, b""))
                    self._skip = end - n
                    pos = n
                    break
                out.append((t, b""))
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _ready_only(
        self, buf: bytes, n: int, out: list[tuple[int, bytes]]
    ) -> list[tuple[int, bytes]]:
        """The relay's cheapest mode (no mirroring): see ``BOUNDARIES``."""
        pos = 0
        int32 = _int32
        while n - pos >= 5:
            length = int32(buf, pos + 1)[0]
            if not 4 <= length <= _MAX_BODY:
                raise ProtocolError(f"invalid backend message length {length}")
            end = pos + 1 + length
            if end > n:
                if buf[pos] == 0x5A or buf[pos] == 0x43:
                    break  # keep a partial ReadyForQuery / CommandComplete
                if buf[pos] == 0x45:
                    out.append((0x45, b""))
                self._skip = end - n
                pos = n
                break
            t = buf[pos]
            if t == 0x5A or t == 0x43:
                out.append((t, buf[pos + 5 : end]))
            elif t == 0x73 or t == 0x45:
                out.append((t, b""))
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        return out


TRACKED = _TRACKED
# What the relay needs when it pairs only Execute, Query, FunctionCall and Sync
# with their answers (mirroring): the acknowledgements of Parse, Bind, Describe
# and Close carry nothing the mirror needs, so they are skipped like DataRows.
OUTCOMES = frozenset(b"ZCEISsGHWc")
# OUTCOMES and the rows of a result, for a read whose answer is digested.
ROWS = OUTCOMES | frozenset(b"DT")
_ROWS_BODY: Final = _WITH_BODY | frozenset(b"DT")


def split_messages(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split complete typed messages (type, raw) off ``buf``; return the rest.

    Used during startup and authentication, where every message is looked at
    and BackendKeyData is rewritten.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(buf)
    while n - pos >= 5:
        length = unpack_from("!i", buf, pos + 1)[0]
        if length < 4 or length > _MAX_BODY:
            raise ProtocolError(f"invalid backend message length {length}")
        end = pos + 1 + length
        if end > n:
            break
        out.append((buf[pos], buf[pos:end]))
        pos = end
    return out, buf[pos:]


def error_fields(body: bytes) -> dict[str, str]:
    """Decode an ErrorResponse/NoticeResponse body into {field code: value}."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def command_tag(body: bytes) -> str:
    return body.rstrip(b"\0").decode("ascii", "replace")
