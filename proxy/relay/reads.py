"""Reads served by the non-authoritative store (``read-new``).

How this works: when the session is idle (no transaction open, nothing in
flight on the authoritative connection) and the client's next request batch
is complete and holds only reads -- one simple Query, or Parse/Bind/Describe/
Execute up to a Sync with unnamed statements and portals created in it or
earlier -- the lock-step hands the batch here instead of forwarding it.  The
batch runs on the session's read connection (the read store, the proxy's
credentials, the session's settings and prepared statements replayed first)
and its answers go to the client untouched.  Anything else, or a batch that
is not whole yet, goes to the authoritative store as before: routing reads is
an optimisation of where they run, never a reason to hold a request back.

Read-your-writes: a batch is routed only once the mirror has applied every
unit this session handed to it and the journal is empty (the read store has
everything the client was told committed).  The wait is bounded by
SHADOW_READ_YOUR_WRITES_TIMEOUT; past it the read goes to the authoritative
store and is counted.  A read connection that cannot be opened or prepared
sends the batch to the authoritative store too: a client statement never
fails because the read store is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from proxy import metrics
from proxy.classify import Kind, classify
from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.relay.shadow import SessionShadow, ShadowRead
from proxy.wire.pg import BOUNDARIES, BackendScanner, ProtocolError, split_messages
from proxy.wire.pg import events as ev
from proxy.wire.pg import messages as m

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager
    from proxy.relay.client import ClientSession

# Event classes as constants (see client.py).
_PARSE: Final = ev.Parse
_BIND: Final = ev.Bind
_DESCRIBE: Final = ev.Describe
_EXECUTE: Final = ev.Execute
_QUERY: Final = ev.Query
_SYNC: Final = ev.Sync

log = logging.getLogger(__name__)

_EXTENDED = (_PARSE, _BIND, _DESCRIBE, _EXECUTE)
_WRITE_HIGH = 256 * 1024


def read_batch(held: Any, statements: dict[str, Any]) -> int:
    """How many head events of ``held`` form a routable read batch (0: none).

    ``statements`` is the recorder's view of the session's prepared statements
    (name -> (sql, Parse body, kind)): a Bind of a named statement is routable
    (the statement is prepared on the read connection first).  A named portal
    or a named Parse is not (it must exist on the authoritative connection),
    nor a Bind of an unnamed statement parsed in an earlier batch (which one
    that is depends on where that batch ran).
    """
    if not held:
        return 0
    head = held[0]
    if type(head) is _QUERY:
        return 1 if classify(head.sql) is Kind.READ else 0
    if type(head) not in _EXTENDED:
        return 0
    kinds: dict[str, Kind] = {}  # statements parsed in this batch
    bound: dict[str, Kind] = {}  # portals bound in this batch -> their kind
    executed = False
    for n, e in enumerate(held, 1):
        cls = type(e)
        if cls is _SYNC:
            return n if executed else 0
        if cls is _PARSE:
            if e.name:
                return 0  # a named statement must exist on the authoritative connection
            kinds[""] = classify(e.sql)
        elif cls is _BIND:
            if e.portal:
                return 0
            kind = kinds.get(e.statement)
            if kind is None:
                st = statements.get(e.statement) if e.statement else None
                if st is None:
                    return 0
                kind = st[2]
            bound[""] = kind
        elif cls is _EXECUTE:
            if e.portal or bound.get("") is not Kind.READ:
                return 0
            executed = True
        elif cls is _DESCRIBE:
            if e.name:
                return 0
        else:
            return 0  # Flush (the client waits before its Sync), Close, anything else
    return 0  # not whole yet


class ReadRoute:
    """One session's connection to the read store and the batches it runs."""

    def __init__(self, session: ClientSession, manager: MirrorManager, params: dict[str, str]):
        self.s = session
        self.manager = manager
        self.params = params
        self.conn: MirrorConnection | None = None
        self.prepared: dict[str, bytes] = {}  # statement name -> Parse body on this connection
        self.prelude: tuple[str, ...] = ()  # settings in force on this connection
        self.timeout = session.server.settings.read_your_writes_timeout
        self.failed_at = 0.0  # the read store refused us lately: no retry for a while
        self.shadow: SessionShadow | None = None  # shadow reads on the old store

    def caught_up(self) -> bool:
        """The read store has every write this session was told committed."""
        mirror = self.s.mirror
        manager = self.manager
        if manager.journaling or manager.journal.pending():
            return False
        return mirror is None or mirror.idle

    async def wait_caught_up(self) -> bool:
        deadline = perf_counter() + self.timeout
        while not self.caught_up():
            left = deadline - perf_counter()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.manager.progress_event().wait(), left)
            except TimeoutError:
                return False
        return True

    def usable(self) -> bool:
        return perf_counter() - self.failed_at > 5.0

    async def run(self, batch: list[Any]) -> bool:
        """Run ``batch`` on the read store, answers to the client; False (nothing
        sent to the client) if it must go to the authoritative store instead."""
        if not self.caught_up() and not await self.wait_caught_up():
            metrics.READ_ROUTE_FALLBACKS.labels("read_your_writes").inc()
            return False
        try:
            conn = await self._prepared(batch)
        except (MirrorUnavailable, ProtocolError, OSError, TimeoutError) as exc:
            self.failed_at = perf_counter()
            self.close()
            metrics.READ_ROUTE_FALLBACKS.labels("unavailable").inc()
            log.info("session %d: read store unavailable, reads stay: %s", self.s.id, exc)
            return False
        if conn is None:
            metrics.READ_ROUTE_FALLBACKS.labels("prepare").inc()
            return False
        for e in batch:  # what the batch leaves prepared on the read connection
            if type(e) is _PARSE:
                self.prepared[""] = e.body
        sr = self._sample(batch)
        conn.write(b"".join([e.raw for e in batch]))
        try:
            await self._relay(conn, sr)
        except (MirrorUnavailable, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            # Answers may have reached the client already: the session cannot go on.
            if sr is not None and self.shadow is not None:
                self.shadow.drop()
            self.close()
            raise MirrorUnavailable(f"read store connection lost mid-answer: {exc}") from exc
        if sr is not None and self.shadow is not None:
            if sr.digest.error:  # the client got an error: nothing to compare
                self.shadow.drop()
            else:
                self.shadow.start(sr, tuple(self.s.recorder.prelude))
        return True

    def _sample(self, batch: list[Any]) -> ShadowRead | None:
        """Maybe shadow this read on the old store (read-new: "on old, compared")."""
        reader = self.s.server.shadow_readers.get(id(self.s.server.reverse_manager))
        if reader is None or not reader.roll() or (self.shadow is not None and self.shadow.busy):
            return None
        executes = [e for e in batch if type(e) is _EXECUTE]
        if type(batch[0]) is _QUERY:
            sr = reader.sample(batch[0].sql, None, None)
        elif len(executes) == 1 and not executes[0].max_rows:
            parse = next((e for e in batch if type(e) is _PARSE), None)
            bind = next(e for e in batch if type(e) is _BIND)
            if parse is not None:
                sql, body = parse.sql, parse.body
            else:
                st = self.s.recorder.statements.get(bind.statement)
                if st is None:
                    return None
                sql, body = st[0], st[1]
            sr = reader.sample(sql, body, bind.body)
        else:
            return None
        if sr is not None:
            if self.shadow is None:
                self.shadow = SessionShadow(reader, self.params, self.s.id)
            self.shadow.busy = True
        return sr

    async def _prepared(self, batch: list[Any]) -> MirrorConnection | None:
        """The read connection with the session's settings and the statements the
        batch binds; None if the read store refused one (the batch goes back)."""
        conn = self.conn
        if conn is None or not conn.connected:
            conn = self.manager.connection(self.params)
            await conn.connect()
            self.conn = conn
            self.prepared.clear()
            self.prelude = ()
        rec = self.s.recorder
        out: list[bytes] = []
        prelude = tuple(rec.prelude)
        if prelude != self.prelude:
            out.append(m.query("RESET ALL"))
            out.extend(m.query(sql) for sql in prelude)
        parsed_here = False
        extended = False
        for e in batch:
            cls = type(e)
            if cls is _PARSE:
                parsed_here = True
            elif cls is _BIND and not (e.statement == "" and parsed_here):
                body = rec.statement_body(e.statement)
                if body is None:
                    return None
                if self.prepared.get(e.statement) != body:
                    if e.statement in self.prepared:
                        out.append(m.close_statement(e.statement))
                    out.append(m.parse(e.statement, body))
                    self.prepared[e.statement] = body
                    extended = True
        if not out:
            return conn
        if extended:
            out.append(m.SYNC)
        conn.write(b"".join(out))
        failed = False
        ready = sum(1 for x in out if x[:1] == b"Q") + (1 if extended else 0)
        while ready:
            t, body = await asyncio.wait_for(conn.read_message(), self.timeout + 5.0)
            if t == 0x45:
                failed = True
            elif t == 0x5A:
                ready -= 1
        if failed:
            self.failed_at = perf_counter()
            self.close()  # start clean next time
            return None
        self.prelude = prelude
        return conn

    async def _relay(self, conn: MirrorConnection, sr: ShadowRead | None) -> None:
        """Answers to the client, chunk by chunk, up to the batch's ReadyForQuery;
        a sampled read's answers are digested on the way (never changed)."""
        scanner = BackendScanner(BOUNDARIES)
        s = self.s
        reader = conn.reader
        pending = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise ProtocolError("read store closed the connection")
            transport = s.transport
            if transport is not None:
                transport.write(chunk)
            done = False
            if sr is not None:
                msgs, pending = split_messages(pending + chunk)
                events = [(t, raw[5:]) for t, raw in msgs]
            else:
                events = scanner.feed(chunk)
            for t, body in events:
                if t == 0x5A:
                    done = True
                    continue
                if t == 0x45:
                    metrics.STATEMENT_ERRORS.labels("new").inc()
                if sr is not None:
                    sr.digest.take(t, body)
            if done:
                return
            if transport is not None and transport.get_write_buffer_size() > _WRITE_HIGH:
                await s.client_writable()

    def close(self) -> None:
        self.shadow = None  # its link is shared; a read in flight still finishes
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.prepared.clear()
        self.prelude = ()
