"""The client stream when nothing is mirrored: frame headers only.

How this works: without mirroring the relay forwards the client's bytes as
they arrive, like a bare relay, and reads nothing but the 5-byte header of
each message: to refuse a malformed or oversized message with 08P01 before
its bytes reach the store, and to count request batches (Sync, Query,
FunctionCall: each one is answered by one ReadyForQuery).  Bodies are skipped
by length, across chunks, without being copied.
"""

from __future__ import annotations

from struct import Struct

from proxy.wire.pg._errors import ProtocolError

_int32 = Struct("!i").unpack_from
# Message types a client may send once the session is established.
_VALID = frozenset(b"BCDEFHPQSXcdfp")
_BATCH_ENDS = frozenset(b"SQF")


class FrameChecker:
    __slots__ = ("_head", "_skip", "max_message_size")

    def __init__(self, max_message_size: int, buffered: bytes = b"") -> None:
        self._head = b""  # a header split across chunks
        self._skip = 0  # body bytes of the current message still to come
        self.max_message_size = max_message_size
        if buffered:
            self.feed(buffered)

    @property
    def at_boundary(self) -> bool:
        """No message is half-read: another reader can take the stream from here."""
        return not self._head and not self._skip

    def _check(self, t: int, length: int) -> None:
        if t not in _VALID:
            raise ProtocolError(f"invalid frontend message type {t}")
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if length > self.max_message_size:
            raise ProtocolError(
                f"message of {length} bytes exceeds the limit of {self.max_message_size}"
            )

    def feed(self, data: bytes) -> int:
        """Check the headers in ``data``; return the request batches it completes."""
        n = len(data)
        pos = self._skip
        batches = 0
        if pos:
            if n <= pos:
                self._skip = pos - n
                return 0
            self._skip = 0
        if self._head:
            head = self._head + data[pos : pos + 5 - len(self._head)]
            if len(head) < 5:
                self._head = head
                return 0
            pos += 5 - len(self._head)
            self._head = b""
            length = _int32(head, 1)[0]
            self._check(head[0], length)
            if head[0] in _BATCH_ENDS:
                batches += 1
            pos += length - 4
        valid = _VALID
        int32 = _int32
        limit = self.max_message_size
        while n - pos >= 5:
            t = data[pos]
            length = int32(data, pos + 1)[0]
            if t not in valid or not 4 <= length <= limit:
                self._check(t, length)
            if t == 0x53 or t == 0x51 or t == 0x46:
                batches += 1
            pos += 1 + length
        if pos > n:
            self._skip = pos - n
        elif pos < n:
            self._head = data[pos:]
        return batches
