"""sync consistency ("lock-step"): the mirror applies a transaction before the
authoritative store commits it.

How this works: in sync mode the session parses the client's messages before
forwarding them and hands them here.  They are forwarded in order until a
*commit point*: a Sync that ends an implicit transaction holding writes, a
COMMIT (simple Query or Execute) of an explicit transaction holding writes, or
an autocommit write sent as a simple Query.  There forwarding stops: once the
store has answered everything already forwarded (a Flush makes it send what
it would otherwise keep buffered until Sync), the open transaction is taken
from the recorder as a unit and the session's mirror applies and commits it;
only then is the commit point forwarded.  A COMMIT sent as Parse/Bind/
Describe/Execute waits whole: when everything before it is answered, its own
Parse, Bind and Describe are held with it rather than flushed first.  Until the authoritative commit the
transaction holds its row locks, so a conflicting writer from another session
reaches the mirror after it: both stores apply conflicting writes in the same
order, and a transaction that starts after a commit sees it on both stores.

An autocommit simple Query commits as it runs, so it is wrapped: the proxy
sends BEGIN before it and, once the mirror has applied it, COMMIT (ROLLBACK if
it failed).  While wrapped, the store's answers are read message by message
and the answers to the proxy's own statements are hidden: the client sees what
an autocommit query shows (ReadyForQuery idle; an ErrorResponse and no
CommandComplete when the commit fails).

A mirror that fails or does not answer within mirror_sync_timeout never
blocks the commit: the unit goes to the journal, the failure is logged once as
a ``sync_deferred`` divergence (naming the first commit it caught), and the
commit goes on.
While the mirror is journaling, commits go straight to the journal (in commit
order, durable before the authoritative commit) and are counted as fallbacks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, cast

from proxy import metrics
from proxy.classify import Kind, classify, fingerprint, tables_of
from proxy.mirror.connection import MirrorUnavailable
from proxy.mirror.pinning import Plan
from proxy.mirror.unit import Unit
from proxy.relay.answers import (
    _IDLE,
    ANSWERS,
    BEGIN_TOKEN,
    CATALOG,
    END_TOKEN,
    ENDING,
    FLOWING,
    LEARNING,
    MIRROR,
    ROUTED,
    SETTINGS_TOKEN,
    STATEMENTS_TOKEN,
    WRAPPED,
    AnswerFilter,
    Internal,
    PinDescribe,
)
from proxy.relay.reads import ReadRoute, read_batch
from proxy.relay.shadow import SessionShadow, ShadowRead
from proxy.relay.switch import LEARN_SETTINGS, LEARN_STATEMENTS, statement_row
from proxy.relay.txn_rules import txn_action, wrappable
from proxy.routing import Mode, Store
from proxy.wire.pg import Completion, Request
from proxy.wire.pg import events as ev
from proxy.wire.pg import messages as m
from proxy.wire.pg._rows import (
    bind_result_formats,
    bind_with_result_formats,
)
from proxy.wire.pg._tracker import D, Q

if TYPE_CHECKING:
    from proxy.relay.client import ClientSession


# Event classes as constants (see client.py).
_QUERY: Final = ev.Query
_EXECUTE: Final = ev.Execute
_PARSE: Final = ev.Parse
_BIND: Final = ev.Bind
_DESCRIBE: Final = ev.Describe
_SYNC: Final = ev.Sync
_COPY_DATA: Final = ev.CopyData
_COPY_DONE: Final = ev.CopyDone
_COPY_FAIL: Final = ev.CopyFail

_BEGIN = m.query("BEGIN")
_COMMIT = m.query("COMMIT")
_ROLLBACK = m.query("ROLLBACK")
_HOLD: Final = metrics.PROXY_HOLD.labels()
_HELD_MAX: Final = 10_000  # events held from the client before its socket stops being read

# What a request is to the lock-step (_gate): no commit point, or which one.
NONE: Final = 0
SYNC: Final = 1
COMMIT: Final = 2
AUTOCOMMIT: Final = 3


class LockStep(AnswerFilter):
    __slots__ = (
        "s",
        "held",
        "state",
        "writes",
        "block",
        "client_gone",
        "_wrapped",
        "_unit",
        "_timer",
        "_started",
        "_paused",
        "timeout",
        "sync",
        "_asked",
        "shadows",
        "shadow",
        "route",
        "_arrived",
        "route_reads",
        "shadowing",
        "_stash",
    )

    def __init__(self, session: ClientSession) -> None:
        self.s = session
        self.held: deque[Any] = deque()
        self.state = FLOWING
        # Hints kept as requests are forwarded, exact once the answers are in:
        self.writes = False  # a write went out since the last transaction boundary
        self.block = False  # inside an explicit transaction block
        self.filtering = False  # answers read message by message (a query is wrapped)
        self.client_gone = False
        self._fbuf = b""
        self._wrapped: Request | None = None
        self._held_tag: bytes | None = None
        self._unit: Unit | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._paused = False
        self.timeout = session.server.settings.mirror_sync_timeout
        # async mode uses this class only for pinning: no commit is held.
        self.sync = session.server.settings.mirror_consistency == "sync"
        self._special: set[int] = set()  # ids of pinned requests awaiting answers
        self._pre = 0  # bytes at the start of _fbuf already relayed (scanner hand-over)
        self._raw_skip = 0  # bytes of a message already partly relayed, to pass on as is
        self._asked: dict[str, int] = {}  # table -> catalog version a refresh was asked at
        self._learned: list[list[bytes | None]] = []
        self.shadows: dict[int, ShadowRead] = {}  # id(request) -> its shadow read
        self.shadow: SessionShadow | None = None
        self.route: ReadRoute | None = None  # read-new: reads on the read store (reads.py)
        self._arrived = 0.0  # when the oldest request not yet forwarded arrived
        # What the session's mode asks of each request, kept as flags (the hot path
        # would otherwise ask the mode for every message): see mode_applied().
        self.route_reads = False  # read-new: reads go to the new store
        self.shadowing = False  # reads are sampled for shadow reads
        # A commit's own Parse/Bind/Describe, held back with it while the mirror
        # applies the transaction (see _pump).
        self._stash: list[bytes] = []
        self.mode_applied(session.mode)

    @property
    def busy(self) -> bool:
        """A commit is under way: it must finish even if the client leaves."""
        return self.state in (MIRROR, WRAPPED, ENDING)

    # -- client side -------------------------------------------------------------------

    def feed(self, events: list[Any]) -> None:
        if not self.held and not self._arrived:
            self._arrived = perf_counter()
        self.held.extend(events)
        if self.state == FLOWING:
            self._pump()
        elif self.state == WRAPPED:
            self._pump_copy()
        if len(self.held) > _HELD_MAX and not self._paused:
            self._paused = True
            self.s.pause_client_reading()

    def lean(self, events: list[Any]) -> bool:
        """True if these requests need nothing of the lock-step: ``async``, no read
        routed or shadowed, nothing held or filtered, and no statement to pin or
        catalog to read first.  The session then forwards them as they came and
        only records them; here they would go out unchanged, at a cost per
        message.  A stale answer errs towards False (a Bind of a name whose
        statement this same batch parses again is judged by the old one)."""
        if (
            self.sync
            or self.route_reads
            or self.shadowing
            or self.state != FLOWING
            or self.held
            or self.filtering
            or self.shadows
        ):
            return False
        rec = self.s.recorder
        for e in events:
            cls = type(e)
            if cls is _BIND:
                if isinstance(rec.statement_pin(cast(ev.Bind, e).statement), Plan):
                    return False
            elif cls is _EXECUTE:
                if isinstance(rec.portal_pin(cast(ev.Execute, e).portal), Plan):
                    return False
            elif cls is _PARSE or cls is _QUERY:
                kind = classify(e.sql)  # one lookup for both questions
                if kind is Kind.WRITE and self._missing_tables(e.sql):
                    return False
                if (kind is Kind.WRITE or kind is Kind.DDL) and self._pinned(e.sql):
                    return False
            elif cls is _DESCRIBE:
                d = cast(ev.Describe, e)
                pin = rec.statement_pin(d.name) if d.target == "S" else rec.portal_pin(d.name)
                if isinstance(pin, Plan):
                    return False
        return True

    def _pinned(self, sql: str) -> bool:
        """A write (or DDL) whose generated values the mirror must be given."""
        manager = self.s.manager
        return manager is not None and isinstance(manager.pinner.plan(sql), Plan)

    def _take(self, batch: list[Any]) -> None:
        """Register the head event as a request (before the next gate looks at the
        recorder's portals) and queue its bytes in ``batch``."""
        e = self.held.popleft()
        s = self.s
        if self._arrived:  # the first request of a round goes out: how long it waited
            now = perf_counter()
            _HOLD.observe(now - self._arrived)
            self._arrived = 0.0
        if not s.outstanding and not batch:
            s.batch_started = perf_counter()
        s._track_requests([e])
        self._note(e)
        cls = type(e)
        if (cls is _QUERY or cls is _EXECUTE) and self.shadowing and not self.block:
            self._sample(e)
        if cls is _QUERY or cls is _EXECUTE:
            req = s.tracker.tail
            token = req.token if req is not None else None
            if type(token) is tuple and isinstance(token[0].pin, Plan):
                assert req is not None
                self._watch(req)
                if cls is _QUERY:
                    batch.append(m.query(token[0].pin.sql))
                    return
        elif cls is _PARSE:
            p = cast(ev.Parse, e)
            pin = s.recorder.statement_pin(p.name)
            if isinstance(pin, Plan):
                rest = p.body[p.body.index(b"\0") + 1 :]  # parameter count and types
                batch.append(m.parse(p.name, pin.sql.encode() + b"\0" + rest))
                return
        elif cls is _BIND:
            raw = self._pinned_bind(e)
            if raw is not None:
                batch.append(raw)
                return
        elif cls is _DESCRIBE:
            d = cast(ev.Describe, e)
            pin = (
                s.recorder.statement_pin(d.name)
                if d.target == "S"
                else s.recorder.portal_pin(d.name)
            )
            if isinstance(pin, Plan):
                self._watch(s.tracker.request(D, PinDescribe(pin)))
        batch.append(e[0])  # raw: the first field of every event

    def _sample(self, e: Any) -> None:
        """Maybe shadow this autocommit read (see shadow.py)."""
        s = self.s
        reader = s.server.shadow_readers.get(id(s.manager))
        if reader is None or not reader.roll():
            return
        req = s.tracker.tail
        if req is None or s.mirror is None:
            return
        if self.shadow is not None and self.shadow.busy:
            return  # one at a time per session
        if type(e) is _QUERY:
            if classify(e.sql) is not Kind.READ:
                return
            sr = reader.sample(e.sql, None, None)
        else:
            found = s.recorder.portal_read(e.portal)
            if found is None or e.max_rows:
                return  # not a read, or a cursor fetching part of its rows
            sr = reader.sample(*found)
        if sr is not None:
            if self.shadow is None:
                self.shadow = SessionShadow(reader, s.mirror.params, s.id)
            self.shadow.busy = True
            self.shadows[id(req)] = sr
            # Only looked at, never changed: the scanner hands the rows over on the
            # way (the filter digests them instead while it reads for another reason).
            s.scanner.digest_rows(True)

    def digest(self, t: int, body: bytes) -> None:
        """A RowDescription or DataRow the scanner handed over: part of a sampled
        read's answer if the request being answered is one."""
        head = self.s.tracker.head
        sr = self.shadows.get(id(head)) if head is not None else None
        if sr is not None:
            if t == 0x44:
                sr.digest.add(body)
            else:
                sr.digest.describe(body)

    def _pinned_bind(self, e: ev.Bind) -> bytes | None:
        """Record the Bind; for a pinned statement, say the format its table
        columns come back in, and give them a format code if the client gave one
        per column (the added columns would otherwise make the Bind invalid)."""
        rec = self.s.recorder
        pin = rec.statement_pin(e.statement)
        if not isinstance(pin, Plan):
            return None
        offset, codes = bind_result_formats(e.body)
        fmt = codes[0] if len(codes) == 1 else 0
        rec.bind(e, fmt)  # again, now with the format (the first call had none)
        if len(codes) <= 1:
            return None
        body = bind_with_result_formats(e.body, offset, codes + [0] * (1 + pin.width))
        names = e.raw[5 : len(e.raw) - len(e.body)]
        return b"B" + (len(names) + len(body) + 4).to_bytes(4, "big") + names + body

    def _watch(self, req: Request) -> None:
        """Answers to ``req`` must be read message by message."""
        self._special.add(id(req))
        if not self.filtering:
            self._fbuf, self._raw_skip = self.s.scanner.take_state()
            self._pre = len(self._fbuf)  # the scanner had relayed these bytes already
            self.filtering = True

    def _write(self, batch: list[bytes]) -> None:
        upstream = self.s.upstream
        if batch and upstream is not None and upstream.transport is not None:
            upstream.transport.write(b"".join(batch))

    def _note(self, e: Any) -> None:
        """Update the hints from a request as it goes out."""
        cls = type(e)
        if cls is _QUERY:
            sql = cast(ev.Query, e).sql
        elif cls is _EXECUTE:
            found = self.s.recorder.portal_sql(cast(ev.Execute, e).portal)
            if found is None:
                return
            sql = found
        else:
            return
        kind = classify(sql)
        if kind is Kind.WRITE or kind is Kind.DDL:
            self.writes = True
        elif kind is Kind.TXN:
            action = txn_action(sql)
            if action == "begin":
                self.block = True
            elif action:
                self.block = False

    def _gate(self, e: Any) -> int:
        if not self.sync:
            return NONE
        cls = type(e)
        if cls is _SYNC:
            return SYNC if self.writes and not self.block else NONE
        if cls is _QUERY:
            text = cast(ev.Query, e).sql
            kind = classify(text)
            if kind is Kind.TXN:
                return COMMIT if self.writes and txn_action(text) == "commit" else NONE
            if (kind is Kind.WRITE or kind is Kind.DDL) and not self.block:
                return AUTOCOMMIT
            return NONE
        if cls is _EXECUTE and self.writes:
            sql = self.s.recorder.portal_sql(cast(ev.Execute, e).portal)
            if sql is not None and classify(sql) is Kind.TXN and txn_action(sql) == "commit":
                return COMMIT
        return NONE

    def _pump(self, batch: list[bytes] | None = None) -> None:
        """Forward held events up to the next commit point (state FLOWING), after
        ``batch`` (requests taken but not written yet)."""
        held = self.held
        tracker = self.s.tracker
        if batch is None:
            batch = []
        sent = tracker.pending  # requests written and not answered yet
        while held and self.state == FLOWING:
            e = held[0]
            if self.route_reads and self._routable():
                n = read_batch(held, self.s.recorder.statements)
                if n:
                    self._write(batch)
                    self._route([held.popleft() for _ in range(n)])
                    return
            missing = self._unknown_tables(e)
            if missing:
                self._write(batch)
                self._wait_catalog(missing)
                return
            gate = self._gate(e)
            if gate == NONE:
                self._take(batch)
                continue
            if gate == COMMIT and not sent and type(e) is _EXECUTE:
                # Every request written is answered; what is pending is the COMMIT's
                # own Parse/Bind/Describe, whose answers decide nothing: they wait
                # with it, which saves the Flush round trip to the store.
                self._stash = batch
                if not self._act(gate, e):
                    return
                batch, self._stash = self._stash, []
                self._take(batch)
                continue
            self._write(batch)
            batch = []
            if tracker.pending:  # the answers decide; have the store send them now
                self._write([m.FLUSH])
                self.state = ANSWERS
                return
            if not self._act(gate, e):
                return
            sent = tracker.pending
            self._take(batch)
        self._write(batch)
        if self._paused and len(held) < _HELD_MAX // 2:
            self._paused = False
            self.s.resume_client_reading()

    # -- reads served by the read store (read-new) --------------------------------------

    def _routable(self) -> bool:
        """Idle, nothing in flight, and the mode reads from the other store."""
        s = self.s
        if self.block or self.writes or s.outstanding or s.status != _IDLE or s.tracker.pending:
            return False
        if self.route is None:
            manager = s.manager
            if manager is None or s.mirror is None:
                return False
            self.route = ReadRoute(s, manager, s.mirror.params)
        return self.route.usable()

    def mode_applied(self, mode: Mode) -> None:
        self.route_reads = mode.read_store is Store.NEW and mode.authoritative is Store.OLD
        self.shadowing = mode.shadow_reads

    def _route(self, batch: list[Any]) -> None:
        self._arrived = 0.0  # a routed read's wait is the read store's (reads.py)
        self.state = ROUTED
        self.s.server.spawn(self._run_route(batch))

    async def _run_route(self, batch: list[Any]) -> None:
        s = self.s
        route = self.route
        assert route is not None
        started = perf_counter()
        try:
            served = await route.run(batch)
        except MirrorUnavailable as exc:
            s.log.warning("session %d: %s", s.id, exc)
            s._fail("08006", "shadowproxy: the read store connection was lost mid-answer")
            return
        if self.state != ROUTED:
            return  # the session ended meanwhile
        self.state = FLOWING
        if served:
            stats = s.server.statement_counters(Store.NEW.value)[Kind.READ]
            for e in batch:
                if type(e) is _QUERY or type(e) is _EXECUTE:
                    stats.inc()
            metrics.UPSTREAM_LATENCY.labels(Store.NEW.value).observe(perf_counter() - started)
            s.at_boundary()
            if self.state == FLOWING:
                self._pump()
            return
        # Served by the authoritative store after all: forwarded as any request is.
        self.held.extendleft(reversed(batch))
        out: list[bytes] = []
        for _ in batch:
            self._take(out)
        self._write(out)
        self._pump()

    def closed(self) -> None:
        """The session ended: its own connection to the read store goes (shadow
        connections are shared: a read in flight still finishes)."""
        if self.state == ROUTED:
            self.state = FLOWING
        if self.route is not None:
            self.route.close()
            self.route = None

    def _unknown_tables(self, e: Any) -> list[str]:
        """Tables a write names that the catalog lacks and was not re-read for."""
        cls = type(e)
        if cls is not _QUERY and cls is not _PARSE:
            return []
        if classify(e.sql) is not Kind.WRITE:
            return []
        return self._missing_tables(e.sql)

    def _missing_tables(self, sql: str) -> list[str]:
        manager = self.s.manager
        if manager is None:
            return []
        pinner = manager.pinner
        tables = pinner.catalog.tables
        return [
            t for t in tables_of(sql) if t not in tables and self._asked.get(t) != pinner.version
        ]

    def _wait_catalog(self, names: list[str]) -> None:
        """A write on a table created since the catalog was read: read it again
        before the statement goes out (pinning needs the table's defaults)."""
        manager = self.s.manager
        assert manager is not None
        self.state = CATALOG

        def done(_: Any) -> None:
            for name in names:  # asked once per catalog version, found or not
                self._asked[name] = manager.pinner.version
            if self.state == CATALOG:
                self.state = FLOWING
                self._pump()

        manager.refresh_catalog().add_done_callback(done)

    def _pump_copy(self) -> None:
        """While a wrapped COPY ... FROM STDIN runs, its data must reach the store."""
        batch: list[bytes] = []
        while self.held and type(self.held[0]) in (_COPY_DATA, _COPY_DONE, _COPY_FAIL):
            self._take(batch)
        self._write(batch)

    def _act(self, gate: int, e: Any) -> bool:
        """At a commit point with every answer in: True to forward ``e`` now."""
        s = self.s
        rec = s.recorder
        if gate == SYNC:
            if self.block:
                return True
            return self._mirror(rec.take_open_unit(commit=False))
        if gate == COMMIT:
            # The transaction's writes are the mirror's now (or rolled back): the
            # Sync after the COMMIT is no commit point, it goes without a Flush.
            self.writes = False
            if not self.block or s.tracker.status == ord("E") or s.tracker.batch_error:
                return True  # an aborted transaction: COMMIT rolls it back
            return self._mirror(rec.take_open_unit(commit=True))
        # AUTOCOMMIT
        if self.block:
            return True
        why = wrappable(e.sql)
        if why:
            metrics.MIRROR_SYNC_FALLBACKS.labels(why).inc()
            return True
        self._wrap(e)
        return False

    # -- the mirror ----------------------------------------------------------------------

    def _mirror(self, unit: Unit | None) -> bool:
        """Hand ``unit`` to the mirror; True if the commit may go on at once."""
        mirror = self.s.mirror
        if unit is None or mirror is None:
            return True
        waiter = mirror.submit_sync(unit)
        if waiter.done():  # journaled straight away: the mirror is down or catching up
            metrics.MIRROR_SYNC_FALLBACKS.labels("journal").inc()
            return True
        self._unit = unit
        self._started = perf_counter()
        self.state = MIRROR
        waiter.add_done_callback(lambda w: self._mirrored(unit, w))
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out, unit)
        return False

    def _mirrored(self, unit: Unit, waiter: asyncio.Future[bool]) -> None:
        if self._unit is not unit:
            return  # timed out earlier: the commit already went on
        manager = self.s.manager
        if manager is not None and manager.parked:
            # new-only began under this commit: journaled for a revert, as intended.
            metrics.MIRROR_SYNC_FALLBACKS.labels("parked").inc()
        elif waiter.cancelled() or not waiter.result():
            # The mirror failed under this commit: reported once per waiting commit;
            # later commits go straight to the journal and are only counted.
            metrics.MIRROR_SYNC_FALLBACKS.labels("journal").inc()
            self._deferred(unit, "the mirror store failed; the unit is journaled")
        self._release()

    def _timed_out(self, unit: Unit) -> None:
        if self._unit is not unit:
            return
        manager = self.s.manager
        if manager is not None:  # the unit and everything after it go to the journal
            manager.start_journaling("sync-timeout")
        metrics.MIRROR_SYNC_FALLBACKS.labels("timeout").inc()
        self._deferred(unit, f"the mirror store did not apply it within {self.timeout:g}s")
        self._release()

    def _deferred(self, unit: Unit, reason: str) -> None:
        manager = self.s.manager
        if manager is not None:
            if manager.reported_episode == manager.episode:
                return  # this failure is already in the log; the metric counts the rest
            manager.reported_episode = manager.episode
        self.s.server.divergences.record(
            "sync_deferred",
            session=self.s.id,
            seq=unit.seq,
            fingerprint="; ".join(fingerprint(it.sql) for it in unit.items),
            tables=sorted({t for it in unit.items for t in tables_of(it.sql)}),
            reason=reason,
        )

    def _release(self) -> None:
        """The mirror has the unit (or the journal will): the commit goes on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unit = None
        metrics.MIRROR_SYNC_WAIT.observe(perf_counter() - self._started)
        if self._wrapped is not None:
            self._end(_COMMIT)
            return
        self.state = FLOWING
        batch: list[bytes] = []
        if self.held:
            batch, self._stash = self._stash, []  # held back with the commit (_pump)
            self._take(batch)  # the commit point itself
        if self.client_gone:
            self._write(batch)
            self._terminate()
        else:
            self._pump(batch)  # the commit and its Sync go out in one write

    # -- wrapping an autocommit Query -----------------------------------------------------

    def _wrap(self, e: ev.Query) -> None:
        s = self.s
        assert s.upstream is not None and s.upstream.transport is not None
        s.tracker.request(Q, BEGIN_TOKEN)
        batch = [_BEGIN]
        self._take(batch)
        self._write(batch)
        self._wrapped = s.tracker.tail
        self.filtering = True
        self.state = WRAPPED
        self._pump_copy()

    def _end(self, raw: bytes) -> None:
        s = self.s
        s.tracker.request(Q, END_TOKEN)
        self.state = ENDING
        if s.upstream is not None and s.upstream.transport is not None:
            s.upstream.transport.write(raw)
            if self.client_gone:
                s.upstream.transport.write(m.TERMINATE)

    def _terminate(self) -> None:
        self.held.clear()
        up = self.s.upstream
        if up is not None and up.transport is not None and not up.transport.is_closing():
            up.transport.write(m.TERMINATE)

    # -- starting to mirror mid-session ---------------------------------------------------

    def learn(self) -> None:
        """Ask the store for the session's prepared statements and SETs; hold the
        client's requests until the answers are in (the session is idle)."""
        s = self.s
        assert s.upstream is not None and s.upstream.transport is not None
        self.state = LEARNING
        self._watch(s.tracker.request(Q, STATEMENTS_TOKEN))
        self._watch(s.tracker.request(Q, SETTINGS_TOKEN))
        s.upstream.transport.write(LEARN_STATEMENTS + LEARN_SETTINGS)

    def _learned_answer(self, token: Internal) -> None:
        rows, self._learned = self._learned, []
        rec = self.s.recorder
        if token is STATEMENTS_TOKEN:
            for row in rows:
                found = statement_row(row)
                if found is None:
                    continue
                name, statement, from_sql, oids = found
                if from_sql:  # SQL PREPARE: replayed as it was sent
                    rec.prelude.append(statement)
                    continue
                rec.learn_statement(name, statement, oids)
            return
        rec.prelude.extend(r[0].decode() for r in rows if r[0] is not None)
        self.state = FLOWING
        self._pump()

    # -- answers -----------------------------------------------------------------------

    def completed(self, c: Completion) -> None:
        """A client request was answered (after the recorder saw it)."""
        if c.status:
            self.block = c.status != _IDLE
            if not self.block and not self.s.tracker.pending:
                self.writes = False
        if c.request is self._wrapped:
            self._wrapped_answered(c)
        elif self.state == ANSWERS and not self.s.tracker.pending:
            self.state = FLOWING
            self._pump()

    def _wrapped_answered(self, c: Completion) -> None:
        if c.status == ord("T"):
            unit = self.s.recorder.take_open_unit(commit=False)
            if self._mirror(unit):
                self._end(_COMMIT)
        elif c.status == ord("E"):
            self._end(_ROLLBACK)
        else:  # the query ended the transaction itself (not wrapped again)
            self._wrapped = None
            self.state = FLOWING
            self._pump()

    def internal_done(self, c: Completion) -> None:
        """An answer to the proxy's own BEGIN / COMMIT / ROLLBACK / questions."""
        token = c.request.token
        if token is STATEMENTS_TOKEN or token is SETTINGS_TOKEN:
            self._learned_answer(token)
            return
        if token is not END_TOKEN:
            return
        s = self.s
        committed = c.request.error is None and "COMMIT" in c.request.tags
        s.recorder.end_taken(committed)
        self._wrapped = None
        self._held_tag = None
        self.writes = False
        self.block = False
        self.state = FLOWING
        s.status = c.status
        if self.client_gone:
            return
        s.at_boundary()
        self._pump()
