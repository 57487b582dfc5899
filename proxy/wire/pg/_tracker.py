"""Pairs each client request with the server's answer to it.

How this works: PostgreSQL answers requests strictly in order.  Every request
that gets an answer is queued with an opaque ``token`` chosen by the caller;
each tracked backend message either completes the request at the head of the
queue or adds to it (a simple Query collects one command tag per statement
until ReadyForQuery).  In the extended protocol an ErrorResponse fails the
head request and the server skips everything up to the next Sync, so those
requests complete as skipped.  ReadyForQuery completes the Sync (or Query) and
carries the transaction status: b"I" idle, b"T" in a transaction, b"E" in a
failed transaction.

The table of which backend message completes which request is ``_DONE``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from proxy.wire.pg._backend import command_tag
from proxy.wire.pg._errors import ProtocolError

# Request kinds: the frontend message types (Final literals: compiled, each use
# is the number itself).
Q: Final = 0x51  # 'Q' Query
P: Final = 0x50  # 'P' Parse
B: Final = 0x42  # 'B' Bind
D: Final = 0x44  # 'D' Describe
E: Final = 0x45  # 'E' Execute
C: Final = 0x43  # 'C' Close
S: Final = 0x53  # 'S' Sync
F: Final = 0x46  # 'F' FunctionCall
# Which backend message types complete which request type (besides ErrorResponse).
_DONE: Final[dict[int, frozenset[int]]] = {
    P: frozenset(b"1"),
    B: frozenset(b"2"),
    D: frozenset(b"Tn"),
    E: frozenset(b"CIs"),
    C: frozenset(b"3"),
    S: frozenset(b"Z"),
    Q: frozenset(b"Z"),
    F: frozenset(b"Z"),
}


@dataclass(slots=True, init=False)
class Request:
    kind: int
    token: Any
    tags: list[str]
    error: bytes | None  # ErrorResponse body
    skipped: bool  # never executed: an earlier error in the same batch
    copy: int  # b"G"/b"H"/b"W" once the server switched to COPY

    def __init__(
        self,
        kind: int,
        token: Any = None,
        tags: list[str] | None = None,
        error: bytes | None = None,
        skipped: bool = False,
        copy: int = 0,
    ) -> None:
        # Hand-written: one is built per request on the relay's hot path, and the
        # generated __init__ with a default_factory costs noticeably more.
        self.kind = kind
        self.token = token
        self.tags = [] if tags is None else tags
        self.error = error
        self.skipped = skipped
        self.copy = copy


@dataclass(slots=True, init=False)
class Completion:
    request: Request
    status: int  # for Sync/Query: the ReadyForQuery status byte
    failed_batch: bool  # for Sync/Query: an error occurred since the last one

    def __init__(self, request: Request, status: int = 0, failed_batch: bool = False) -> None:
        # Hand-written like Request's: one per answered request (mypyc compiles
        # this one; the dataclass-generated __init__ runs in the interpreter).
        self.request = request
        self.status = status
        self.failed_batch = failed_batch


class Tracker:
    __slots__ = ("_queue", "status", "batch_error")

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()
        self.status = ord("I")
        self.batch_error = False  # an error since the last ReadyForQuery

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def head(self) -> Request | None:
        return self._queue[0] if self._queue else None

    @property
    def tail(self) -> Request | None:
        """The request registered last (a CopyData belongs to it)."""
        return self._queue[-1] if self._queue else None

    def in_flight(self) -> list[tuple[int, Any]]:
        """(kind, token) of the requests still waiting for their answer."""
        return [(req.kind, req.token) for req in self._queue]

    def request(self, kind: int, token: Any = None) -> Request:
        req = Request(kind, token)
        self._queue.append(req)
        return req

    def response(self, t: int, body: bytes) -> list[Completion]:
        """Feed one tracked backend message; return the requests it completed."""
        q = self._queue
        if not q:
            if t in b"ENSAK":
                return []  # asynchronous messages (or a FATAL error before close)
            raise ProtocolError(f"unexpected backend message {chr(t)!r} with no request pending")
        head = q[0]
        if t == 0x45:  # ErrorResponse
            self.batch_error = True
            # Q/F: ReadyForQuery still follows.  S: the implicit transaction
            # failed to commit at Sync (deferred constraint, serialization
            # failure); ReadyForQuery completes the Sync as a failed batch.
            if head.kind in (Q, F, S):
                head.error = body
                return []
            q.popleft()
            head.error = body
            done = [Completion(head)]
            # Everything up to the next Sync is skipped by the server.
            while q and q[0].kind != S:
                skipped = q.popleft()
                skipped.skipped = True
                done.append(Completion(skipped))
            return done
        if t == 0x43:  # CommandComplete
            head.tags.append(command_tag(body))
            if head.kind in (Q, F):
                return []
        elif t in b"GHW":
            head.copy = t
            return []
        elif t == 0x63:  # CopyDone from the server: the CommandComplete follows
            return []
        elif t == 0x5A:  # ReadyForQuery
            self.status = body[0] if body else 0
            done = []
            while q and q[0].kind not in (S, Q, F):
                stale = q.popleft()  # only after an error: already skipped
                stale.skipped = True
                done.append(Completion(stale))
            if q:
                done.append(Completion(q.popleft(), self.status, self.batch_error))
            self.batch_error = False
            return done
        expected = _DONE.get(head.kind)
        if expected is None or t not in expected:
            if head.kind in (Q, F) or t == 0x74:  # rows, descriptions inside a Query
                return []
            raise ProtocolError(f"backend message {chr(t)!r} does not answer {chr(head.kind)!r}")
        q.popleft()
        return [Completion(head)]
