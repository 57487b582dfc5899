"""Shadow connections: pipelined links to the store shadow reads run on, shared
by every session with the same settings.

How this works: a link is an asyncio Protocol on a connection opened with the
mirror store's credentials and a session's startup parameters, its ``SET``
statements replayed (the prelude).  Every session whose parameters and prelude
are the same uses the same link, so the other store sees one shadow connection
per distinct session setting, not one per client session (a fleet of pooled
application connections would otherwise double the connections the mirror
already opens there).  Reads are pipelined: each request is written at once,
its answer digested as its bytes arrive and handed to its callback at its
ReadyForQuery; answers come in request order.  A read's time on the store runs
from when the store could start on it (its send, or the previous answer on the
link, whichever is later) to its ReadyForQuery.  An extended-protocol statement
is prepared once per link under a name of its own.  One sweep timer closes a
link whose oldest read is unanswered past the timeout (every read on it then
ends as an error) and a link left idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.wire.pg import ProtocolError, error_fields, split_messages
from proxy.wire.pg import messages as m

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_TIMEOUT = 30.0  # a read unanswered this long closes its link
_IDLE = 60.0  # a link unused this long is closed
# Statements a link prepares under names of its own, at most (then the rest are
# parsed on every read, as the client's unnamed statements are).
_LINK_STATEMENTS = 64

# (sorted startup parameters, prelude): the settings a link carries.
LinkKey = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


@dataclass(slots=True)
class Digest:
    ordered: bool
    columns: list[tuple[bytes, int]] = field(default_factory=list)  # (name, type oid)
    rows: int = 0
    acc: int = 0
    error: str = ""

    def describe(self, body: bytes) -> None:
        n = int.from_bytes(body[:2], "big")
        pos = 2
        cols = []
        for _ in range(n):
            nul = body.index(b"\0", pos)
            oid = int.from_bytes(body[nul + 7 : nul + 11], "big")
            # Types created on each store get their own OIDs: compare built-in ones only.
            cols.append((body[pos:nul], oid if oid < 16384 else 0))
            pos = nul + 19
        self.columns = cols

    def take(self, t: int, body: bytes) -> None:
        """One answer message: rows and their description digested, an error noted."""
        if t == 0x44:
            self.add(body)
        elif t == 0x54:
            self.describe(body)
        elif t == 0x45:
            self.error = error_fields(body).get("C", "error")

    def add(self, row: bytes) -> None:
        self.rows += 1
        h = hash(row)
        self.acc = hash((self.acc, h)) if self.ordered else (self.acc + h) & _MASK

    def same(self, other: Digest) -> bool:
        # An extended-protocol client may not have described its portal: its
        # answer then has no RowDescription to compare.
        return (
            self.error == other.error
            and (not self.columns or not other.columns or self.columns == other.columns)
            and self.rows == other.rows
            and self.acc == other.acc
        )

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": [c.decode("utf-8", "replace") for c, _ in self.columns],
        }


# The digested answer (None: the link was lost or timed out) and the read's time
# on the store.
Done = Callable[[Digest | None, float], None]
# After the Bind: describe, run and end the unnamed portal (built once).
_RUN_PORTAL = m.DESCRIBE_PORTAL_UNNAMED + m.EXECUTE_UNNAMED_ALL + m.SYNC


class Sweeper:
    """One timer for every open link (a timer per read showed in the profile):
    a link whose oldest read is past its deadline is closed, which ends its
    reads as errors; a link unused for ``idle`` seconds is closed too."""

    def __init__(self, timeout: float = _TIMEOUT, idle: float = _IDLE) -> None:
        self.timeout = timeout
        self.idle = idle
        self.links: set[Link] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, link: Link) -> None:
        self.links.add(link)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = perf_counter()
        for link in list(self.links):
            if link.waiting:
                late = now - link.waiting[0][2] > self.timeout
            else:
                late = now - link.used > self.idle
            if late:
                self.links.discard(link)
                link.close()  # connection_lost follows: reads in flight end as errors
        if self.links:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)

    def close(self) -> None:
        for link in list(self.links):
            link.close()
        self.links.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Link(asyncio.Protocol):
    """One open shadow connection: reads pipelined, answers digested as they arrive."""

    def __init__(self, keep: object, sweeper: Sweeper) -> None:
        self.keep = keep  # the stream writer the socket came from (must stay alive)
        self.sweeper = sweeper
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        # Reads sent and not yet answered, in order: (digest, done, sent at, the
        # Parse body of a prepared statement it binds, or None).
        self.waiting: deque[tuple[Digest, Done, float, bytes | None]] = deque()
        self.free_at = 0.0  # when the store finished the previous answer
        self.used = perf_counter()
        self.on_lost: Callable[[Link], None] | None = None
        # The client's Parse bodies prepared here, by the name they got.  Names
        # are never reused: an error drops the entry, the next read prepares anew.
        self.statements: dict[bytes, str] = {}
        self.named = 0

    @classmethod
    async def open(cls, conn: MirrorConnection, prelude: tuple[str, ...], sweeper: Sweeper) -> Link:
        """Connect ``conn``, apply the session's settings, take its socket over."""
        try:
            await conn.connect()
            await conn.run_prelude(prelude)
            transport, keep = conn.detach()
        except BaseException:
            conn.close()
            raise
        link = cls(keep, sweeper)
        transport.set_protocol(link)
        link.connection_made(transport)
        sweeper.add(link)
        return link

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def request(
        self, sql: str, parse_body: bytes | None, bind_body: bytes | None
    ) -> tuple[bytes, bytes | None]:
        """The bytes that run a statement here, and the Parse body they bind (None
        for a query): the client's query, or its Bind on this link's own prepared
        copy of the client's Parse."""
        if parse_body is None or bind_body is None:
            return m.query(sql), None
        name = self.statements.get(parse_body)
        if name is not None:
            return m.bind(name, bind_body) + _RUN_PORTAL, parse_body
        if self.named >= _LINK_STATEMENTS:  # full: parsed as the client's unnamed one
            return m.parse("", parse_body) + m.bind("", bind_body) + _RUN_PORTAL, None
        name = f"shadowproxy_s{self.named}"
        self.named += 1
        self.statements[parse_body] = name
        request = m.parse(name, parse_body) + m.bind(name, bind_body) + _RUN_PORTAL
        return request, parse_body

    def send(self, request: bytes, digest: Digest, done: Done, bound: bytes | None = None) -> None:
        assert self.transport is not None
        now = perf_counter()
        self.used = now
        self.waiting.append((digest, done, now, bound))
        self.transport.write(request)

    def ask(
        self, sql: str, parse_body: bytes | None, bind_body: bytes | None, ordered: bool
    ) -> asyncio.Future[Digest]:
        """A statement as a future (re-checks); fails with MirrorUnavailable if the
        link is lost or times out."""
        fut: asyncio.Future[Digest] = asyncio.get_running_loop().create_future()
        if not self.usable:
            fut.set_exception(MirrorUnavailable("the shadow connection is closed"))
            return fut

        def done(d: Digest | None, _took: float) -> None:
            if fut.done():
                return
            if d is None:
                fut.set_exception(MirrorUnavailable("the shadow connection was lost"))
            else:
                fut.set_result(d)

        request, bound = self.request(sql, parse_body, bind_body)
        self.send(request, Digest(ordered), done, bound)
        return fut

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            msgs, self.buf = split_messages(self.buf + data)
        except ProtocolError:
            self.close()
            return
        waiting = self.waiting
        for t, raw in msgs:
            if not waiting:  # nothing asked: the connection is out of step
                self.close()
                return
            if t == 0x5A:
                self._answered()
            else:
                waiting[0][0].take(t, raw[5:])

    def _answered(self) -> None:
        digest, done, sent, bound = self.waiting.popleft()
        now = perf_counter()
        took = now - (sent if sent > self.free_at else self.free_at)
        self.free_at = now
        if bound is not None and digest.error:
            # The Parse may not have taken, or its plan went stale (a column
            # changed type): the next read prepares it again, under a new name.
            self.statements.pop(bound, None)
        done(digest, took)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.sweeper.links.discard(self)
        lost, self.waiting = self.waiting, deque()
        if self.on_lost is not None:
            self.on_lost(self)
        for _, done, _, _ in lost:
            done(None, 0.0)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.TERMINATE)
            self.transport.close()  # connection_lost follows: reads in flight end (None)


class LinkPool:
    """The open links of one shadow store, one per distinct session setting."""

    def __init__(
        self, connect: Callable[[dict[str, str]], MirrorConnection], max_links: int
    ) -> None:
        self.connect = connect
        # Sessions that SET a value of their own (a user id per request, say) would
        # otherwise open a connection per value: past this many, the least recently
        # used idle link makes room, or the read is shed.
        self.max_links = max_links
        self.sweeper = Sweeper()
        self.links: dict[LinkKey, Link] = {}
        # Links being opened: who waits for each (called with the link, or None).
        self.opening: dict[LinkKey, list[Callable[[Link | None], None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the opens under way
        self.last_error = ""

    def ready(self, key: LinkKey) -> Link | None:
        link = self.links.get(key)
        return link if link is not None and link.usable else None

    def open(
        self, key: LinkKey, params: dict[str, str], then: Callable[[Link | None], None]
    ) -> bool:
        """Open the link for ``key`` (once, however many sessions ask) and call
        ``then`` with it, or with None if it cannot be opened; False (``then`` is
        not called) if every link is busy and the pool is full."""
        waiters = self.opening.get(key)
        if waiters is not None:
            waiters.append(then)
            return True
        if len(self.links) + len(self.opening) >= self.max_links and not self._evict():
            return False
        self.opening[key] = [then]
        task = spawn(self._open(key, params))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _evict(self) -> bool:
        """Close the least recently used idle link; False if none is idle."""
        idle = [(link.used, key) for key, link in self.links.items() if not link.waiting]
        if not idle:
            return False
        key = min(idle)[1]
        self.links.pop(key).close()
        return True

    async def _open(self, key: LinkKey, params: dict[str, str]) -> None:
        link: Link | None = None
        try:
            link = await Link.open(self.connect(params), key[1], self.sweeper)
        except (MirrorUnavailable, ProtocolError, OSError, TimeoutError) as exc:
            self.last_error = str(exc)
            log.info("shadow connection: %s", exc)
        else:
            self.links[key] = link
            link.on_lost = self._lost
        for then in self.opening.pop(key, []):
            then(link)

    def _lost(self, link: Link) -> None:
        for key, found in list(self.links.items()):
            if found is link:
                del self.links[key]

    def close(self) -> None:
        """The proxy stops: opens under way are cancelled, open links closed."""
        for task in self._tasks:
            task.cancel()
        self.opening.clear()
        self.sweeper.close()
        self.links.clear()


_TASKS: set[asyncio.Task[None]] = set()  # a task must be referenced until it ends


def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task
