"""Client -> server stream parser.

How this works: the stream starts with untyped startup packets (int32 length,
int32 code); once a StartupMessage has been seen every message is typed (one
type byte, int32 length including itself, body).  ``feed(data)`` returns the
complete messages as events and keeps any partial tail for the next call.
A bad length, an unknown type or a message over ``max_message_size`` raises
``ProtocolError`` and leaves the parser in a terminal state: after a protocol
error the stream has no reliable message boundary left.
"""

from __future__ import annotations

from struct import Struct, unpack_from
from typing import Any, Final

from proxy.wire.pg import _events as ev
from proxy.wire.pg._errors import ProtocolError

PROTOCOL_3: Final = 196608  # 3.0
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
_MAX_STARTUP: Final = 10_000  # the server's own bound on a startup packet
_int32: Final = Struct("!i").unpack_from
# An event is built with tuple.__new__ directly: a NamedTuple's own __new__ is
# Python code, a call back into the interpreter for every message when this
# module is compiled (setup.py).
_new: Final[Any] = tuple.__new__


def _cstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string in message")
    return buf[pos:end].decode("utf-8", "surrogateescape"), end + 1


def _startup(raw: bytes) -> ev.FrontendEvent:
    code = unpack_from("!i", raw, 4)[0]
    if code == SSL_REQUEST and len(raw) == 8:
        return ev.SSLRequest(raw)
    if code == GSSENC_REQUEST and len(raw) == 8:
        return ev.GSSENCRequest(raw)
    if code == CANCEL_REQUEST:
        if len(raw) < 16:
            raise ProtocolError("invalid cancel request length")
        return ev.CancelRequest(raw, unpack_from("!i", raw, 8)[0], raw[12:])
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", "0A000")
    params: list[tuple[str, str]] = []
    pos = 8
    while True:
        if pos >= len(raw):
            raise ProtocolError("startup packet is not terminated")
        if raw[pos] == 0:
            break
        key, pos = _cstr(raw, pos)
        value, pos = _cstr(raw, pos)
        params.append((key, value))
    if not any(k == "user" for k, _ in params):
        raise ProtocolError("no PostgreSQL user name specified in startup packet", "28000")
    return ev.StartupMessage(raw, code, tuple(params))


def _typed(t: int, raw: bytes) -> ev.FrontendEvent:
    # Ordered by frequency in extended-protocol traffic: Bind, Execute, Sync, Parse...
    if t == 0x42:  # 'B'
        end = raw.find(b"\0", 5)
        end2 = raw.find(b"\0", end + 1) if end >= 0 else -1
        if end2 < 0:
            raise ProtocolError("unterminated string in message")
        return _new(
            ev.Bind,
            (
                raw,
                raw[5:end].decode("utf-8", "surrogateescape"),
                raw[end + 1 : end2].decode("utf-8", "surrogateescape"),
                raw[end2 + 1 :],
            ),
        )
    if t == 0x45:  # 'E'
        end = raw.find(b"\0", 5)
        if end < 0 or end + 5 != len(raw):
            raise ProtocolError("invalid Execute message")
        return _new(
            ev.Execute,
            (raw, raw[5:end].decode("utf-8", "surrogateescape"), _int32(raw, end + 1)[0]),
        )
    if t == 0x53:  # 'S'
        return _new(ev.Sync, (raw,))
    if t == 0x50:  # 'P'
        name, pos = _cstr(raw, 5)
        end = raw.find(b"\0", pos)
        if end < 0 or end + 3 > len(raw):
            raise ProtocolError("invalid Parse message")
        sql = raw[pos:end].decode("utf-8", "surrogateescape")
        return _new(ev.Parse, (raw, name, sql, raw[pos:]))
    if t == 0x44 or t == 0x43:  # 'D' Describe, 'C' Close
        if len(raw) < 7 or raw[5] not in b"SP":
            raise ProtocolError("invalid Describe/Close target")
        name, _ = _cstr(raw, 6)
        if t == 0x44:
            return _new(ev.Describe, (raw, chr(raw[5]), name))
        return ev.Close(raw, chr(raw[5]), name)
    if t == 0x51:  # 'Q'
        sql, _ = _cstr(raw, 5)
        return _new(ev.Query, (raw, sql))
    if t == 0x64:  # 'd'
        return ev.CopyData(raw)
    if t == 0x63:  # 'c'
        return ev.CopyDone(raw)
    if t == 0x66:  # 'f'
        return ev.CopyFail(raw)
    if t == 0x48:  # 'H'
        return ev.Flush(raw)
    if t == 0x58:  # 'X'
        return ev.Terminate(raw)
    if t == 0x70:  # 'p'
        return ev.AuthResponse(raw)
    if t == 0x46:  # 'F'
        return ev.FunctionCall(raw)
    raise ProtocolError(f"invalid frontend message type {t}")


class FrontendParser:
    """Turns the client's byte stream into events (see module docstring)."""

    __slots__ = ("_buf", "_startup", "_broken", "max_message_size")

    def __init__(self, max_message_size: int = 1 << 30) -> None:
        self._buf = b""
        self._startup = True
        self._broken = False
        self.max_message_size = max_message_size

    @property
    def in_startup(self) -> bool:
        return self._startup

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffer(self) -> bytes:
        """Hand the unparsed tail over to another parser (see LeanFrontend)."""
        buf, self._buf = self._buf, b""
        return bytes(buf)

    def feed(self, data: bytes) -> list[ev.FrontendEvent]:
        if self._broken:
            raise ProtocolError("connection already failed")
        buf = self._buf + data if self._buf else data
        out: list[ev.FrontendEvent] = []
        pos = 0
        n = len(buf)
        try:
            while True:
                if self._startup:
                    if n - pos < 4:
                        break
                    length = unpack_from("!i", buf, pos)[0]
                    if length < 8 or length > _MAX_STARTUP:
                        raise ProtocolError("invalid length of startup packet")
                    if n - pos < length:
                        break
                    event = _startup(bytes(buf[pos : pos + length]))
                    pos += length
                    if isinstance(event, ev.StartupMessage):
                        self._startup = False
                    out.append(event)
                    if isinstance(event, ev.CancelRequest):
                        break  # nothing may follow a cancel request
                    continue
                if n - pos < 5:
                    break
                t = buf[pos]
                length = _int32(buf, pos + 1)[0]
                if length < 4:
                    raise ProtocolError(f"invalid message length {length}")
                if length > self.max_message_size:
                    raise ProtocolError(
                        f"message of {length} bytes exceeds the limit of {self.max_message_size}"
                    )
                end = pos + 1 + length
                if end > n:
                    break
                out.append(_typed(t, buf[pos:end] if pos or end != n else buf))
                pos = end
        except ProtocolError:
            self._broken = True
            self._buf = b""
            raise
        self._buf = buf[pos:] if pos < n else b""
        return out
