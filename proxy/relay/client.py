"""One client session: the relay between a client and the authoritative store.

How this works: the session moves through phases STARTUP (SSL/GSSENC
negotiation, cancel requests, the StartupMessage) -> CONNECTING (opening the
authoritative connection) -> AUTH (the client's own authentication exchange,
relayed untouched, except that BackendKeyData is replaced by the proxy's
key) -> READY (queries) -> CLOSED.  In READY, every chunk is forwarded as
received, both ways, before the proxy looks at it.  When the mode mirrors,
client messages are then parsed whole and Execute/Query/Sync paired with the
answers that end them; completions feed the recorder, which hands committed
units to this session's mirror queue.  When nothing is mirrored only the
client's frame headers are checked (FrameChecker) and only ReadyForQuery,
CommandComplete, PortalSuspended and ErrorResponse are picked out of the
answers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from proxy import metrics
from proxy.classify import Kind, fingerprint, kind_of_tag, tables_of
from proxy.mirror.recorder import Recorder
from proxy.mirror.unit import Unit
from proxy.relay.answers import _IDLE, AUTH, CLOSED, CONNECTING, ENDING, READY, STARTUP, Internal
from proxy.relay.lockstep import LockStep
from proxy.relay.switch import SwitchMixin
from proxy.relay.upstream import HELD_BACK, JOURNAL_STALLED, UpstreamProtocol
from proxy.routing import Mode, Store
from proxy.wire.pg import (
    BOUNDARIES,
    OUTCOMES,
    BackendScanner,
    Completion,
    FrameChecker,
    FrontendParser,
    ProtocolError,
    Tracker,
    error_fields,
    split_messages,
)
from proxy.wire.pg import events as ev
from proxy.wire.pg import messages as m
from proxy.wire.pg._tracker import E, F, Q, S

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager, SessionMirror
    from proxy.relay.server import ProxyServer
    from proxy.settings import Dsn

# Event classes as constants: compiled (setup.py), ``type(e) is _QUERY`` is one
# pointer comparison; ``ev.Query`` would look up the module and then the class
# on every test, several times per message.
_BIND: Final = ev.Bind
_EXECUTE: Final = ev.Execute
_PARSE: Final = ev.Parse
_SYNC: Final = ev.Sync
_QUERY: Final = ev.Query
_COPY_DATA: Final = ev.CopyData
_CLOSE: Final = ev.Close
_FUNCTION_CALL: Final = ev.FunctionCall
_AUTH_RESPONSE: Final = ev.AuthResponse
_SSL_REQUEST: Final = ev.SSLRequest
_GSSENC_REQUEST: Final = ev.GSSENCRequest
_CANCEL_REQUEST: Final = ev.CancelRequest
_STARTUP_MESSAGE: Final = ev.StartupMessage

log = logging.getLogger(__name__)

# Startup parameters that describe the connection itself, not session state.
_NOT_SESSION_STATE = frozenset({"user", "database", "replication", "options", "application_name"})


class ClientSession(SwitchMixin, asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.id = server.next_session_id()
        # Every record of this session carries its id (a field of its own in JSON logs).
        self.log = logging.LoggerAdapter(log, {"session": self.id})
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamProtocol | None = None
        self.phase = STARTUP
        self.parser = FrontendParser(server.settings.max_message_size)
        self.scanner = BackendScanner(BOUNDARIES)
        # With mirroring (recorder.mirroring) Execute/Query/Sync are paired with
        # their answers by the tracker; without it only frame headers are read.
        self.tracker = Tracker()
        self.outstanding = 0  # Sync/Query/FunctionCall not yet answered by ReadyForQuery
        self.status = _IDLE  # transaction status from the last ReadyForQuery
        self.startup: ev.StartupMessage | None = None
        self.early: list[bytes] = []
        self.pending_requests: list[Any] = []
        # Without mirroring the client's messages are not parsed, only their
        # headers checked; statements are counted from the answers' tags.
        self.frames: FrameChecker | None = None
        self.auth_buf = b""
        self.old_key: tuple[int, bytes] | None = None
        self.key = (secrets.randbits(31), secrets.token_bytes(4))
        self.mirror: SessionMirror | None = None
        # sync consistency: commits wait for the mirror (None when async or not mirroring)
        self.lockstep: LockStep | None = None
        self.recorder = Recorder(self.id, self._emit, self._keep_for_repair)
        self.batch_started = 0.0
        self.deadline: asyncio.TimerHandle | None = None
        self.store = server.mode.authoritative.value
        self.mode = server.mode  # applied at transaction boundaries (see _apply_mode)
        self.tls = False
        self._writable: asyncio.Future[None] | None = None  # see client_writable
        self._read_paused = 0  # HELD_BACK | STORE_FULL | JOURNAL_STALLED
        self.manager: MirrorManager | None = None  # the mirror this session records for
        self._sync = server.settings.mirror_consistency == "sync"
        self._init_switch()  # moving the authoritative store (switch.py)
        self.stats = server.statement_counters(self.store)
        self.latency = metrics.UPSTREAM_LATENCY.labels(self.store)
        self.errors = metrics.STATEMENT_ERRORS.labels(self.store)

    # -- client side -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        self.server.session_opened(self)
        # Like the server's authentication_timeout: a client that never finishes
        # its startup must not hold a connection (and a store session) forever.
        self.deadline = asyncio.get_running_loop().call_later(
            self.server.settings.startup_timeout, self._startup_deadline
        )

    def _startup_deadline(self) -> None:
        if self.phase < READY:
            self.log.info("session %d: startup not finished in time", self.id)
            self._fail("57014", "canceling authentication due to timeout")

    def data_received(self, data: bytes) -> None:
        if (
            self.mode is not self.server.mode
            and self.status == _IDLE
            and not self.outstanding
            and self.phase == READY
        ):  # an idle session takes a new mode before its next request
            self._apply_mode()
        if self.switching:  # moving to the other store: the request waits for it
            self._switch_buf.append(data)
            return
        frames = self.frames
        if frames is not None:  # nothing mirrored: bytes untouched, headers checked
            upstream = self.upstream
            if upstream is None or upstream.transport is None:
                return
            if not self.outstanding:
                self.batch_started = perf_counter()
            # Forward first (latency); a malformed frame still ends the session
            # right below, and the store refuses it too.
            upstream.transport.write(data)
            try:
                self.outstanding += frames.feed(data)
            except ProtocolError as exc:
                metrics.PROTOCOL_ERRORS.labels("client").inc()
                self.log.info("session %d: client protocol error: %s", self.id, exc)
                self._fail(exc.sqlstate, str(exc))
            return
        try:
            if self.phase == READY:
                # Forward first, then parse: the parse and the mirror bookkeeping
                # stay off the round trip.  Answers are handled in a later
                # callback, after this one has registered the requests.  A
                # malformed message still ends the session below (the store
                # refuses it too, and its connection is closed with ours).
                upstream = self.upstream
                if upstream is None or upstream.transport is None:
                    return
                lockstep = self.lockstep
                if lockstep is not None:  # parsed first: held at commits (sync), pinned
                    tail = self.parser.buffered
                    events = self.parser.feed(data)
                    if not lockstep.lean(events):
                        lockstep.feed(events)
                        return
                    if not events:
                        return  # a partial message: it waits for the rest
                    if not self.outstanding:
                        self.batch_started = perf_counter()
                    # Whole messages only: a partial one goes with the batch that
                    # completes it, which the lock-step may have to forward itself.
                    whole = not tail and not self.parser.buffered
                    upstream.transport.write(data if whole else b"".join([e.raw for e in events]))
                    self._track_requests(events)
                    return
                if not self.outstanding:
                    self.batch_started = perf_counter()
                upstream.transport.write(data)
                self._track_requests(self.parser.feed(data))
                return
            for e in self.parser.feed(data):
                self._startup_event(e)
        except ProtocolError as exc:
            metrics.PROTOCOL_ERRORS.labels("client").inc()
            self.log.info("session %d: client protocol error: %s", self.id, exc)
            self._fail(exc.sqlstate, str(exc))
        except Exception:
            metrics.SESSION_ERRORS.inc()
            self.log.exception("session %d: unexpected error", self.id)
            self._fail("XX000", "internal error in shadowproxy")

    def _relay_requests(self, events: list[Any]) -> None:
        """Requests parsed before the session was ready (pipelined early)."""
        upstream = self.upstream
        if upstream is None or upstream.transport is None:
            return
        if self.lockstep is not None:
            self.lockstep.feed(events)
            return
        if not self.outstanding:
            self.batch_started = perf_counter()
        self._track_requests(events)
        upstream.transport.write(b"".join([e.raw for e in events]))

    def _track_requests(self, events: list[Any]) -> None:
        """Mirroring: pair every Execute, Query and Sync with its answer.

        Parse, Bind, Describe and Close are not paired: their acknowledgements
        carry nothing the mirror needs, and an error they cause fails the next
        Execute of the batch just the same (the server skips it).
        """
        tracker = self.tracker
        rec = self.recorder
        stats = self.stats
        for e in events:
            cls = type(e)
            if cls is _BIND:
                rec.bind(e)
            elif cls is _EXECUTE:
                kind, token = rec.execute(e)
                stats[kind].inc()
                tracker.request(E, token)
            elif cls is _PARSE:
                rec.parse(e)
            elif cls is _SYNC:
                tracker.request(S)
                self.outstanding += 1
            elif cls is _QUERY:
                kind, token = rec.query(e)
                stats[kind].inc()
                tracker.request(Q, token)
                self.outstanding += 1
            elif cls is _COPY_DATA:
                # The COPY statement it feeds is the request registered last.
                owner = tracker.tail
                if owner is not None:
                    rec.copy_data(owner.token, e)
            elif cls is _CLOSE:
                rec.close(e)
            elif cls is _FUNCTION_CALL:
                stats[Kind.WRITE].inc()
                self.server.divergences.record(
                    "unmirrorable",
                    session=self.id,
                    fingerprint="<function call>",
                    reason="fastpath function call",
                )
                tracker.request(F)
                self.outstanding += 1

    def _startup_event(self, e: Any) -> None:
        assert self.transport is not None
        if self.phase in (CONNECTING, AUTH):
            if not isinstance(e, _AUTH_RESPONSE) and self.phase == AUTH:
                # A request pipelined before the session is ready: it must go
                # through the request path once it is (pairing, counting).
                self.pending_requests.append(e)
            elif self.phase == AUTH and self.upstream and self.upstream.transport:
                self.upstream.transport.write(e.raw)
            else:
                self.early.append(e.raw)
            return
        if isinstance(e, _SSL_REQUEST):
            ctx = self.server.tls_context
            if ctx is None or self.tls:
                self.transport.write(m.SSL_NO)
            else:
                self.transport.write(m.SSL_YES)
                self.server.spawn(self._start_tls(ctx))
        elif isinstance(e, _GSSENC_REQUEST):
            self.transport.write(m.SSL_NO)
        elif isinstance(e, _CANCEL_REQUEST):
            self.server.cancel(e.process_id, e.secret_key)
            self.transport.close()
        elif isinstance(e, _STARTUP_MESSAGE):
            self.startup = e
            self.phase = CONNECTING
            self.server.spawn(self._connect_upstream(e))
        else:
            raise ProtocolError("expected a startup packet")

    async def _start_tls(self, ctx: Any) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True)
        except (OSError, ConnectionError) as exc:
            self.log.info("session %d: TLS handshake failed: %s", self.id, exc)
            self._close()
            return
        self.transport = new  # type: ignore[assignment]
        self.tls = True

    async def _connect_upstream(self, startup: ev.StartupMessage) -> None:
        # The mode at connect time decides the store (it may have changed since accept).
        self.mode = self.server.mode
        self._bind_store(self.mode.authoritative)
        dsn = self.server.dsn_of(self.mode.authoritative)
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamProtocol(self), dsn.host, dsn.port),
                self.server.settings.mirror_connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            self.log.warning("session %d: cannot reach the %s store: %s", self.id, self.store, exc)
            self._fail("08006", f"shadowproxy: the {self.store} store is unreachable")
            return
        if self.phase == CLOSED:
            if proto.transport:
                proto.transport.close()
            return
        self.upstream = proto
        self.phase = AUTH
        assert proto.transport is not None
        proto.transport.write(self._startup_for(dsn, startup) + b"".join(self.early))
        self.early.clear()

    def _startup_for(self, dsn: Dsn, startup: ev.StartupMessage) -> bytes:
        """The client's StartupMessage for the store it goes to: on the new store, the
        database named in SHADOW_NEW_DSN (the client names the old store's)."""
        if self.store != Store.NEW.value or not dsn.database:
            return startup.raw
        if startup.get("database") == dsn.database:
            return startup.raw
        params = dict(startup.params)
        params["database"] = dsn.database
        return m.startup_message(params, startup.protocol)

    def _fail(self, sqlstate: str, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.error_response(sqlstate, message))
        self._close()

    def _close(self) -> None:
        self.phase = CLOSED
        self.frames = None
        if self.deadline is not None:
            self.deadline.cancel()
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        up = self.upstream.transport if self.upstream else None
        lockstep = self.lockstep
        if lockstep is not None and lockstep.busy and up is not None and not up.is_closing():
            # A commit is under way (the mirror has or will have it): it goes through,
            # then Terminate; upstream_lost finishes the session.
            lockstep.client_gone = True
            if lockstep.state == ENDING:
                up.write(m.TERMINATE)
            return
        if up is not None and not up.is_closing():
            up.write(m.TERMINATE)
            # Requests in flight (a COMMIT, say) must still be answered so a
            # committed unit is not lost to the mirror: the store finishes them,
            # reads Terminate and closes; upstream_lost then finishes the session.
            if not (self.phase == READY and self.outstanding):
                up.close()
        else:
            self._finish()

    def pause_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.resume_reading()
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def client_writable(self) -> None:
        """Until the client's socket takes more (a read routed to the read store)."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() < 64 * 1024:
            return
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()
        await self._writable

    def pause_client_reading(self, why: int = HELD_BACK) -> None:
        if not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused |= why

    def resume_client_reading(self, why: int = HELD_BACK) -> None:
        was = self._read_paused
        self._read_paused = was & ~why
        transport = self.transport
        if was and not self._read_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def journal_caught_up(self) -> None:
        """The manager journaled the units it held (see _emit)."""
        self.resume_client_reading(JOURNAL_STALLED)

    # -- authoritative store side ------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self.frames is not None:  # nothing mirrored: the hot path, kept flat
            transport = self.transport
            if transport is not None:
                transport.write(data)
            try:
                events = self.scanner.feed(data)
            except ProtocolError as exc:
                self._upstream_protocol_error(exc)
                return
            for t, body in events:
                if t == 0x5A:
                    self._ready(body[0])
                elif t == 0x43:  # CommandComplete: count the statement by its tag
                    self.stats[kind_of_tag(body)].value += 1
                elif t == 0x73:  # PortalSuspended: rows of a cursor-like read
                    self.stats[Kind.READ].value += 1
                else:  # ErrorResponse
                    self.errors.value += 1
            return
        try:
            if self.phase == READY:
                if self.lockstep is not None and self.lockstep.filtering:
                    self.lockstep.upstream(data)  # a wrapped query: message by message
                    return
                if self.transport is not None:
                    self.transport.write(data)
                for t, body in self.scanner.feed(data):  # mirroring: frames is None
                    if t == 0x53:  # ParameterStatus: relayed; nothing to track yet
                        continue
                    if t == 0x44 or t == 0x54:  # a sampled read's rows (digest_rows)
                        if self.lockstep is not None:
                            self.lockstep.digest(t, body)
                        continue
                    if t == 0x45:
                        self.errors.value += 1
                    for c in self.tracker.response(t, body):
                        self.completed(c)
            elif self.phase != CLOSED:
                self._auth_data(data)
        except ProtocolError as exc:
            self._upstream_protocol_error(exc)
        except Exception:
            metrics.SESSION_ERRORS.inc()
            self.log.exception("session %d: unexpected error", self.id)
            self._fail("XX000", "internal error in shadowproxy")

    def _upstream_protocol_error(self, exc: ProtocolError) -> None:
        metrics.PROTOCOL_ERRORS.labels(self.store).inc()
        self.log.warning("session %d: %s store protocol error: %s", self.id, self.store, exc)
        self._fail("08P01", f"shadowproxy: protocol error from the {self.store} store")

    def completed(self, c: Completion) -> None:
        """A request was answered: the recorder, the boundary, the lock-step."""
        if c.request.token.__class__ is Internal:
            assert self.lockstep is not None
            self.lockstep.internal_done(c)
            return
        if self.lockstep is not None and self.lockstep.shadows:
            self.lockstep.shadow_done(c)  # before the boundary it may bring
        self.recorder.complete(c)
        if c.status:
            self._ready(c.status)
        if self.lockstep is not None:
            self.lockstep.completed(c)

    def at_boundary(self) -> None:
        if self.status == _IDLE and not self.outstanding:
            if self.server.draining:
                self.shutdown_now()
            elif self.mode is not self.server.mode:
                self._apply_mode()

    # -- mode changes ------------------------------------------------------------------

    def _apply_mode(self) -> None:
        """At a transaction boundary: start or stop mirroring as the new mode says,
        or move the session to the store that becomes authoritative (switch.py).
        Deferred to the next boundary while a request is half-read.
        """
        mode = self.server.mode
        if self.lockstep is not None and self.lockstep.state:
            return  # a commit, a routed read or a catalog read under way: next boundary
        if mode.authoritative.value != self.store or (
            self.server.barrier_pending(mode.authoritative)
        ):
            self._switch_authority(mode)
            return
        manager = self.server.manager_for(mode)
        if manager is not None and not self.recorder.mirroring:
            if self.frames is not None and not self.frames.at_boundary:
                return
            self.frames = None  # the parser (past startup, its buffer empty) reads on
            self._open_mirror(mode)
            if self.lockstep is not None and not self._state_known:
                self.lockstep.learn()
        elif manager is None and self.recorder.mirroring and not self._stop_mirroring():
            return
        self.mode = mode
        if self.lockstep is not None:
            if mode.read_store is mode.authoritative:
                self.lockstep.closed()  # no reads on the other store any more
            # new-only journals for a revert: nothing to wait for at commits.
            self.lockstep.sync = self._sync and mode is not Mode.NEW_ONLY
            self.lockstep.mode_applied(mode)

    def _stop_mirroring(self, refeed: bool = True) -> bool:
        lockstep = self.lockstep
        if lockstep is not None and (lockstep.held or lockstep.filtering or lockstep.state):
            return False
        if self.mirror is not None:
            self.mirror.close()  # its queue is still applied
            self.mirror = None
        self.recorder.mirroring = False
        if lockstep is not None:
            lockstep.closed()
        self.lockstep = None
        self.scanner.tracked = BOUNDARIES
        rest = self.parser.take_buffer()
        self.frames = FrameChecker(self.server.settings.max_message_size)
        if rest and refeed:
            self.data_received(rest)
        elif rest:  # a request's first bytes: they go before what waited for the move
            self._switch_buf.insert(0, rest)
        return True

    def _bind_store(self, store: Store) -> None:
        """The store this session's upstream is on, and its metric children."""
        self.store = store.value
        self.stats = self.server.statement_counters(self.store)
        self.latency = metrics.UPSTREAM_LATENCY.labels(self.store)
        self.errors = metrics.STATEMENT_ERRORS.labels(self.store)

    def _startup_params(self) -> dict[str, str]:
        if self.startup is None:
            return {}
        return {
            k: v for k, v in self.startup.params if k not in ("user", "database", "replication")
        }

    def _ready(self, status: int) -> None:
        """ReadyForQuery: a request batch ended; a transaction boundary if idle."""
        self.status = status
        self.outstanding -= 1
        now = perf_counter()
        self.latency.observe(now - self.batch_started)
        if self.outstanding:
            self.batch_started = now
        if status == _IDLE and not self.outstanding:
            if self.server.draining:
                self.shutdown_now()
            elif self.mode is not self.server.mode:
                self._apply_mode()

    def _auth_data(self, data: bytes) -> None:
        msgs, rest = split_messages(self.auth_buf + data)
        self.auth_buf = rest
        out: list[bytes] = []
        for i, (t, raw) in enumerate(msgs):
            if t == 0x4B:  # BackendKeyData: the client gets the proxy's key
                self.old_key = (int.from_bytes(raw[5:9], "big"), raw[9:])
                out.append(m.backend_key_data(*self.key))
                self.server.register_cancel_key(self.key, self)
                continue
            out.append(raw)
            if t == 0x52 and raw[5:9] == b"\0\0\0\0":  # AuthenticationOk
                self._open_mirror()
            elif t == 0x45:
                self.log.info(
                    "session %d: %s store refused the session: %s",
                    self.id,
                    self.store,
                    error_fields(raw[5:]).get("M", ""),
                )
            elif t == 0x5A:  # first ReadyForQuery: startup is over
                self.phase = READY
                if self.deadline is not None:
                    self.deadline.cancel()
                if self.transport is not None:
                    self.transport.write(b"".join(out))
                pending, self.pending_requests = self.pending_requests, []
                if self.recorder.mirroring:
                    if pending:
                        self._relay_requests(pending)
                else:
                    # Nothing to mirror: from here on only frame headers are read.
                    early = b"".join([e.raw for e in pending]) + self.parser.take_buffer()
                    self.frames = FrameChecker(self.server.settings.max_message_size)
                    if early:
                        self.data_received(early)
                tail = b"".join(r for _, r in msgs[i + 1 :]) + rest
                self.auth_buf = b""
                if tail:
                    self.upstream_data(tail)
                return
        if self.transport is not None and out:
            self.transport.write(b"".join(out))

    def _open_mirror(self, mode: Mode | None = None) -> None:
        mode = mode or self.server.mode
        manager = self.server.manager_for(mode)
        if manager is None or self.startup is None:
            return
        self.manager = manager
        params = self._startup_params()
        self.recorder.prelude.extend(
            f"SET {k} = '{v.replace(chr(39), chr(39) * 2)}'"
            for k, v in self.startup.params
            if k not in _NOT_SESSION_STATE
        )
        self.mirror = manager.open_session(self.id, params)
        self.recorder.order_now = lambda: manager.order
        self.recorder.on_commit_failed = self._commit_failed
        self.recorder.on_unpinnable = self._unpinnable
        self.recorder.pinner = manager.pinner
        self.recorder.mirroring = True
        # Parses before forwarding: holds commits (sync) and rewrites pinned writes.
        self.lockstep = LockStep(self)
        self.lockstep.sync = self._sync and mode is not Mode.NEW_ONLY
        self.scanner.tracked = OUTCOMES

    def upstream_lost(self, exc: Exception | None) -> None:
        # The store ended the session (its own FATAL, if any, was relayed).
        in_doubt = self.recorder.connection_lost(self.tracker.in_flight(), self.status == _IDLE)
        if in_doubt is not None:
            self._keep_for_repair(in_doubt, "authoritative connection lost with writes in flight")
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        self.phase = CLOSED
        if self.lockstep is not None:
            self.lockstep.closed()
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        self.server.session_closed(self)

    # -- mirror ------------------------------------------------------------------------

    def _emit(self, unit: Unit) -> None:
        if self.mirror is not None:
            self.mirror.submit(unit)
            manager = self.manager
            if manager is not None and manager.over_hold_bound:
                # Units the journal cannot take are held in memory: past the
                # queue bounds this session's next requests wait, never dropped.
                manager.stalled.add(self)
                self.pause_client_reading(JOURNAL_STALLED)

    def _keep_for_repair(self, unit: Unit, reason: str, kind: str = "unmirrorable") -> None:
        """A unit whose effect on the authoritative store is unknown or partial:
        reported as a divergence and kept whole in the rejected journal, never
        applied blindly and never dropped."""
        self.server.divergences.record(
            kind,
            session=self.id,
            seq=unit.seq,
            fingerprint="; ".join(fingerprint(it.sql) for it in unit.items),
            tables=sorted({t for it in unit.items for t in tables_of(it.sql)}),
            reason=reason,
        )
        manager = self.manager
        if manager is not None:
            manager.reject(unit)

    def _commit_failed(self, unit: Unit) -> None:
        self._keep_for_repair(
            unit, "the authoritative commit failed after the mirror applied it", "commit_failed"
        )

    def _unpinnable(self, unit: Unit, reason: str) -> None:
        # Still mirrored (the rows exist on both stores); the values that differ are
        # for the comparator to repair from the unit kept here.
        self._keep_for_repair(unit, reason, "unpinnable")

    def describe(self) -> str:
        """Where the session stands, for a log line (no statement text)."""
        lockstep = self.lockstep
        return (
            f"session {self.id} phase={self.phase} outstanding={self.outstanding}"
            f" status={chr(self.status) if self.status else '-'}"
            f" lockstep={lockstep.state if lockstep is not None else '-'}"
            f" client={'open' if self.transport is not None else 'gone'}"
        )

    def shutdown_now(self) -> None:
        self._fail("57P01", "terminating connection: shadowproxy is shutting down")

    def forward_cancel(self) -> None:
        if self.old_key is not None:
            dsn = self.server.dsn_of(Store(self.store))
            self.server.spawn(self.server.send_cancel(dsn, *self.old_key))
