"""Moving a session's writes to the other store (write-new, and back) in place.

How this works: a session applies a mode that moves the authoritative store
at a transaction boundary, with nothing in flight; the client's next bytes
wait.  The server first makes the target ready once for all sessions (the
mirror feeding it has applied everything, its sequences are advanced past the
current store's with headroom; see ProxyServer.authority_ready).  Then the
session asks its current store for its state (prepared statements and
settings it changed), opens a connection to the target store with the
proxy's credentials and the client's startup parameters, replays that state
there (a write statement is prepared with the pinning RETURNING of the mirror
that now follows it), and takes the socket over as its upstream.  The old
connection is closed; the session's mirror now runs the other way.  If any
step fails, the session stays where it is (its writes still reach both
stores) and tries again after a pause.

What cannot move: temporary tables, advisory locks, LISTEN registrations and
cursors WITH HOLD live in one server session; a session holding them keeps
them on the store it started on only until it moves.  The client's own
credentials are not replayed either: from the move on, the session runs as
the proxy's user for that store.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

from proxy import metrics
from proxy.classify import Kind, classify
from proxy.control.controller import SUPERSEDED
from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.mirror.pinning import Plan
from proxy.relay.answers import _IDLE, READY
from proxy.relay.upstream import UpstreamProtocol
from proxy.wire.pg import ProtocolError, error_fields, split_messages
from proxy.wire.pg import messages as m
from proxy.wire.pg._rows import data_row_values, parse_body

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager
    from proxy.mirror.recorder import Recorder
    from proxy.relay.client import ClientSession
    from proxy.relay.lockstep import LockStep
    from proxy.relay.server import ProxyServer
    from proxy.routing import Mode, Store
    from proxy.settings import Dsn
    from proxy.wire.pg import FrameChecker
    from proxy.wire.pg import events as ev

# The session's prepared statements and the settings it changed (not those of its
# startup packet: the new connection is opened with the same ones).
LEARN_STATEMENTS = m.query(
    "SELECT name, statement, from_sql, parameter_types::oid[]::text FROM pg_prepared_statements"
)
LEARN_SETTINGS = m.query(
    "SELECT format('SELECT set_config(%L, %L, false)', name, setting)"
    " FROM pg_settings WHERE source = 'session'"
)


def statement_row(row: list[bytes | None]) -> tuple[str, str, bool, list[int]] | None:
    """(name, text, prepared with SQL PREPARE, parameter type OIDs) of a
    LEARN_STATEMENTS row."""
    name, text, from_sql, types = row
    if name is None or text is None:
        return None
    oids = [int(x) for x in (types or b"{}").decode().strip("{}").split(",") if x]
    return name.decode(), text.decode(), from_sql == b"t", oids


class SwitchFailed(Exception):
    pass


class _Collector(asyncio.Protocol):
    """Stands in for the upstream protocol while the proxy asks its own questions."""

    def __init__(self, answers: int) -> None:
        self.left = answers
        self.buf = b""
        self.messages: list[tuple[int, bytes]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: Exception | None = None

    def data_received(self, data: bytes) -> None:
        msgs, self.buf = split_messages(self.buf + data)
        for t, raw in msgs:
            self.messages.append((t, raw))
            if t == 0x5A:
                self.left -= 1
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if not self.done.done():
            self.done.set_exception(self.lost)


async def learn(s: SwitchMixin, timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The session's SETs (as set_config statements) and prepared statements
    (name, text, from SQL PREPARE, parameter type OIDs), from its current store."""
    assert s.upstream is not None and s.upstream.transport is not None
    transport = s.upstream.transport
    own = transport.get_protocol()
    collector = _Collector(2)
    transport.set_protocol(collector)
    try:
        transport.write(LEARN_STATEMENTS + LEARN_SETTINGS)
        await asyncio.wait_for(asyncio.shield(collector.done), timeout)
    finally:
        if collector.lost is None:
            transport.set_protocol(own)
            if collector.buf:
                raise SwitchFailed("unexpected data after the proxy's questions")
        else:
            own.connection_lost(collector.lost)  # the session ends as it would have
    statements: list[tuple[Any, ...]] = []
    settings: list[str] = []
    answers = 0
    for t, raw in collector.messages:
        if t == 0x45:
            raise SwitchFailed(f"cannot read the session's state: {error_fields(raw[5:])}")
        if t == 0x5A:
            answers += 1
        elif t == 0x44:
            row = data_row_values(raw[5:])
            if answers == 0:
                found = statement_row(row)
                if found is not None:
                    statements.append(found)
            elif row[0] is not None:
                settings.append(row[0].decode())
    return settings, statements


async def open_authoritative(
    s: SwitchMixin,
    dsn: Dsn,
    params: dict[str, str],
    settings: list[str],
    statements: list[tuple[Any, ...]],
    manager: MirrorManager | None,
    timeout: float,
) -> tuple[asyncio.Transport, object, tuple[int, bytes] | None, list[str]]:
    """A connection to ``dsn`` carrying the session's state; (transport, what
    keeps it open, backend key, the session's prelude for its mirror)."""
    user = dsn.user or (s.startup.get("user") if s.startup else "") or "postgres"
    conn = MirrorConnection(
        dsn.host, dsn.port, user, dsn.password, dsn.database or user, params, timeout
    )
    await conn.connect()
    try:
        known = s.recorder.statements
        prelude = list(settings)
        out: list[bytes] = [m.query(sql) for sql in settings]
        answers = len(out)
        parsed = False
        for name, text, from_sql, oids in statements:
            if from_sql:  # SQL PREPARE: replayed as the client sent it
                out.append(m.query(text))
                prelude.append(text)
                answers += 1
                continue
            found = known.get(name)
            sql, body = (found[0], found[1]) if found else (text, parse_body(text, oids=oids))
            if manager is not None and classify(sql) in (Kind.WRITE, Kind.DDL):
                plan = manager.pinner.plan(sql)
                if isinstance(plan, Plan):  # the mirror needs the generated values
                    body = plan.sql.encode() + body[body.index(b"\0") :]
            out.append(m.parse(name, body))
            parsed = True
        if parsed:
            out.append(m.SYNC)
            answers += 1
        if out:
            conn.write(b"".join(out))
        errors: list[str] = []
        while answers:
            t, body = await asyncio.wait_for(conn.read_message(), timeout)
            if t == 0x45:
                errors.append(error_fields(body).get("M", ""))
            elif t == 0x5A:
                answers -= 1
        if errors:
            raise SwitchFailed(f"the session's state does not replay: {errors[0]}")
        key = conn.backend_key
        transport, keep = conn.detach()
        return transport, keep, key, prelude
    except BaseException:
        conn.close()
        raise


class SwitchMixin:
    """The session's side of a move, mixed into ClientSession."""

    # ClientSession's, read and called here.
    server: ProxyServer
    id: int
    log: logging.LoggerAdapter[logging.Logger]
    phase: int
    status: int
    outstanding: int
    store: str
    upstream: UpstreamProtocol | None
    old_key: tuple[int, bytes] | None
    lockstep: LockStep | None
    frames: FrameChecker | None
    recorder: Recorder
    startup: ev.StartupMessage | None

    # ClientSession's own, called here (real methods, not annotations: the compiled
    # class needs them to exist).
    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def _apply_mode(self) -> None:
        raise NotImplementedError

    def _stop_mirroring(self, refeed: bool = True) -> bool:
        raise NotImplementedError

    def _bind_store(self, store: Store) -> None:
        raise NotImplementedError

    def _startup_params(self) -> dict[str, str]:
        raise NotImplementedError

    def _init_switch(self) -> None:
        self.switching = False
        self._switch_buf: list[bytes] = []  # the client's bytes while the session moves
        self._switch_retry_at = 0.0
        self._state_known = False  # the session's state was just replayed: no learn()

    def quiet_for_switch(self) -> bool:
        """Holds no transaction open and no request in flight on its store."""
        if self.switching or self.phase != READY:
            return True
        lockstep = self.lockstep
        return (
            self.status == _IDLE
            and not self.outstanding
            and (lockstep is None or (not lockstep.state and not lockstep.held))
        )

    def _switch_authority(self, mode: Mode) -> None:
        if self.switching or perf_counter() < self._switch_retry_at:
            return
        lockstep = self.lockstep
        if lockstep is not None and (lockstep.held or lockstep.filtering or lockstep.state):
            return  # not quiet yet: the next boundary
        if self.frames is not None and not self.frames.at_boundary:
            return
        self.switching = True
        self.server.spawn(self._switch(mode))

    async def _switch(self, mode: Mode) -> None:
        target = mode.authoritative
        timeout = self.server.settings.mirror_connect_timeout
        started = perf_counter()
        try:
            why = await self.server.authority_ready(target)
            if why == SUPERSEDED:  # the mode changed again: the next boundary decides
                self._switched()
                return
            if why and self.store != target.value:
                raise SwitchFailed(why)
            if self.phase != READY:
                return
            if self.store == target.value:  # already there: it only waited for the barrier
                self.switching = False
                self._apply_mode()
                self._switched()
                return
            settings, statements = await learn(self, timeout)
            if self.phase != READY:
                return
            transport, keep, key, prelude = await open_authoritative(
                self,
                self.server.dsn_of(target),
                self._startup_params(),
                settings,
                statements,
                self.server.manager_for(mode),
                timeout,
            )
        except (SwitchFailed, MirrorUnavailable, ProtocolError, OSError, TimeoutError) as exc:
            metrics.AUTHORITY_SWITCHES.labels(target.value, "failed").inc()
            self.log.warning(
                "session %d: stays on the %s store for now: %s", self.id, self.store, exc
            )
            self._switch_retry_at = perf_counter() + 5.0
            self._switched()
            return
        if self.phase != READY:
            transport.close()
            return
        old = self.upstream
        proto = UpstreamProtocol(cast("ClientSession", self))
        proto.keep = keep
        transport.set_protocol(proto)
        proto.connection_made(transport)
        self.upstream = proto
        if old is not None:
            old.detach()
        self.old_key = key
        self._bind_store(target)
        # The mirror now runs the other way: stop, then start as the mode says.
        if self.recorder.mirroring:
            self._stop_mirroring(refeed=False)
        self.recorder.prelude[:] = prelude
        self._state_known = True
        self._apply_mode()
        self._state_known = False
        self.recorder.replan()
        metrics.AUTHORITY_SWITCHES.labels(target.value, "moved").inc()
        metrics.AUTHORITY_SWITCH_SECONDS.observe(perf_counter() - started)
        self._switched()

    def _switched(self) -> None:
        """Let the client's requests that waited for the move go on."""
        self.switching = False
        rest, self._switch_buf = self._switch_buf, []
        if rest and self.phase == READY:
            self.data_received(b"".join(rest))
