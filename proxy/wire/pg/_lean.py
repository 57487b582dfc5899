"""The client stream when nothing is mirrored: headers only, no events.

How this works: without mirroring the relay only needs message boundaries (to
forward whole messages and refuse broken ones), the number of request batches
(Sync, Query, FunctionCall: each ends with one ReadyForQuery) and the kind of
every executed statement (for metrics).  ``feed`` walks the headers, keeps
the statement kind per prepared-statement and portal name, and returns the
complete messages to forward as one slice.  It enforces the same framing rules
as ``FrontendParser`` and raises the same ``ProtocolError``.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import Any

from proxy.wire.pg._errors import ProtocolError

_int32 = Struct("!i").unpack_from
# Message types a client may send once the session is established.
_OTHER = frozenset(b"DCHdcfp")


class LeanFrontend:
    __slots__ = (
        "_buf",
        "max_message_size",
        "_classify",
        "_unknown",
        "statements",
        "_portals",
    )

    def __init__(
        self,
        classify: Callable[[str], Any],
        unknown: Any,
        max_message_size: int,
        buffered: bytes = b"",
    ) -> None:
        self._buf = buffered
        self.max_message_size = max_message_size
        self._classify = classify
        self._unknown = unknown  # the kind of a statement we never saw prepared
        # name -> (sql, Parse body after the name, kind): enough to hand the
        # session over to the full parser if mirroring starts later.
        self.statements: dict[bytes, tuple[str, bytes, Any]] = {}
        self._portals: dict[bytes, Any] = {}

    @property
    def buffered(self) -> bytes:
        return self._buf

    def feed(self, data: bytes) -> tuple[bytes, list[Any], int, bool]:
        """Return (complete messages, kinds executed, request batches, Terminate seen)."""
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        kinds: list[Any] = []
        batches = 0
        terminate = False
        int32 = _int32
        statements = self.statements
        portals = self._portals
        unknown = self._unknown
        try:
            while n - pos >= 5:
                t = buf[pos]
                length = int32(buf, pos + 1)[0]
                if length < 4:
                    raise ProtocolError(f"invalid message length {length}")
                if length > self.max_message_size:
                    raise ProtocolError(
                        f"message of {length} bytes exceeds the limit of {self.max_message_size}"
                    )
                end = pos + 1 + length
                if end > n:
                    break
                if t == 0x42:  # Bind: portal NUL statement NUL ...
                    a = buf.find(b"\0", pos + 5, end)
                    b = buf.find(b"\0", a + 1, end) if a >= 0 else -1
                    if b < 0:
                        raise ProtocolError("invalid Bind message")
                    st = statements.get(buf[a + 1 : b])
                    portals[buf[pos + 5 : a]] = st[2] if st is not None else unknown
                elif t == 0x45:  # Execute: portal NUL int32
                    a = buf.find(b"\0", pos + 5, end)
                    if a < 0 or a + 5 != end:
                        raise ProtocolError("invalid Execute message")
                    kinds.append(portals.get(buf[pos + 5 : a], unknown))
                elif t == 0x53:  # Sync
                    batches += 1
                elif t == 0x50:  # Parse: name NUL query NUL int16 ...
                    a = buf.find(b"\0", pos + 5, end)
                    b = buf.find(b"\0", a + 1, end) if a >= 0 else -1
                    if b < 0 or b + 3 > end:
                        raise ProtocolError("invalid Parse message")
                    sql = buf[a + 1 : b].decode("utf-8", "surrogateescape")
                    statements[buf[pos + 5 : a]] = (sql, buf[a + 1 : end], self._classify(sql))
                elif t == 0x51:  # Query
                    if buf[end - 1] != 0:
                        raise ProtocolError("unterminated string in message")
                    kinds.append(
                        self._classify(buf[pos + 5 : end - 1].decode("utf-8", "surrogateescape"))
                    )
                    batches += 1
                elif t == 0x58:  # Terminate
                    terminate = True
                elif t == 0x46:  # FunctionCall
                    kinds.append(unknown)
                    batches += 1
                elif t in _OTHER:
                    if t == 0x43 and end - pos > 6 and buf[pos + 5] == 0x53:  # Close statement
                        statements.pop(buf[pos + 6 : end - 1], None)
                else:
                    raise ProtocolError(f"invalid frontend message type {t}")
                pos = end
        except ProtocolError:
            self._buf = b""
            raise
        self._buf = buf[pos:] if pos < n else b""
        return (buf if pos == n else buf[:pos]), kinds, batches, terminate
