"""The proxy's own PostgreSQL connection to the mirror store.

It authenticates with the credentials of the mirror store's DSN (trust,
cleartext, md5 or SCRAM-SHA-256), then applies units: every item of a unit is
written in one pipeline and the answers are read back with the same sans-IO
tracker the relay uses.  Statement texts are prepared once per connection
under names of its own (the client's names mean nothing here).

Authentication reads the socket as a stream; the first apply hands it to a
Protocol that takes answers as they arrive and calls the unit's callback once
the store has answered all of it (``start``; ``apply`` awaits the same).  A
unit's deadline is checked by one timer per connection, re-armed lazily, not
by a timer per unit.  Shadow reads use the stream side only (``write``,
``read_message``, ``detach``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from struct import unpack_from
from typing import Any, Final

from proxy.mirror.unit import ItemKind, Unit
from proxy.wire.pg import BackendScanner, ProtocolError, Tracker, error_fields
from proxy.wire.pg import messages as m
from proxy.wire.pg._auth import ScramClient, md5_password
from proxy.wire.pg._tracker import B, E, P, Q, S

log = logging.getLogger(__name__)

_STATEMENT_CACHE: Final = 2000
# Command tags of statements that drop every prepared statement of the connection.
_DROPS_STATEMENTS: Final = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})
# What the connection waits for: the unit's answers, the ROLLBACK of a unit that
# failed inside its transaction, the Close of prepared statements over the cache.
_APPLY: Final = 0
_ROLLBACK: Final = 1
_TRIM: Final = 2
# Tasks that cancel a timed-out apply on the store (kept until they finish).
_BACKGROUND: set[asyncio.Task[None]] = set()
_QUERY_CANCELED: Final = "57014"


async def send_cancel(host: str, port: int, process_id: int, secret: bytes, timeout: float) -> None:
    """A CancelRequest for a store's backend, on a connection of its own (as the
    protocol asks); a store that cannot be reached is logged, nothing more."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(m.cancel_request(process_id, secret))
            await writer.drain()
            writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("could not send a cancel request to %s:%d: %s", host, port, exc)


class MirrorUnavailable(Exception):
    """The mirror store cannot be reached or the connection broke."""


@dataclass(slots=True, init=False)
class ItemResult:
    tags: list[str]
    error: dict[str, str] | None
    skipped: bool

    def __init__(
        self,
        tags: list[str] | None = None,
        error: dict[str, str] | None = None,
        skipped: bool = False,
    ) -> None:
        # Hand-written (see _tracker.Completion): one per mirrored item.
        self.tags = [] if tags is None else tags
        self.error = error
        self.skipped = skipped


# Results of an applied unit (one per item), or why it could not be applied.
Applied = Callable[[list["ItemResult"] | None, "MirrorUnavailable | None"], None]


class MirrorConnection:
    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str | None,
        database: str,
        params: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._addr = (host, port)
        self._user = user
        self._password = password
        self._startup = {"user": user, "database": database, **(params or {})}
        self._startup.setdefault("application_name", "shadowproxy-mirror")
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._statements: dict[bytes, str] = {}
        self._next_name = 0
        self.fresh = True  # session state (prelude) not yet applied
        self.backend_key: tuple[int, bytes] | None = None
        # Once units are applied (see start): the socket, read by a Protocol.
        self._transport: asyncio.Transport | None = None
        self._keep: object = None
        self._scanner = BackendScanner()
        self._tracker: Tracker | None = None
        self._completions: list[Any] = []
        self._results: list[ItemResult] = []
        self._unit: Unit | None = None
        self._phase = _APPLY
        self._done: Applied | None = None
        self._apply_timeout = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._cancelled = False  # the unit in flight is past its deadline, cancelled

    @property
    def connected(self) -> bool:
        if self._transport is not None:
            return not self._transport.is_closing()
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(*self._addr), self._timeout
            )
            self._writer.write(m.startup_message(self._startup))  # type: ignore[union-attr]
            await asyncio.wait_for(self._authenticate(), self._timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            self.close()
            raise MirrorUnavailable(f"cannot connect to the mirror store: {exc}") from exc
        self.fresh = True

    async def _read_message(self) -> tuple[int, bytes]:
        assert self._reader is not None
        head = await self._reader.readexactly(5)
        length = unpack_from("!i", head, 1)[0]
        return head[0], await self._reader.readexactly(length - 4)

    async def _authenticate(self) -> None:
        assert self._writer is not None
        scram: ScramClient | None = None
        while True:
            t, body = await self._read_message()
            if t == 0x45:  # ErrorResponse
                fields = error_fields(body)
                raise ProtocolError(f"{fields.get('C', '')} {fields.get('M', '')}")
            if t == 0x5A:  # ReadyForQuery (ParameterStatus: not needed)
                return
            if t == 0x4B:  # BackendKeyData: to cancel this backend's statements
                self.backend_key = (unpack_from("!i", body)[0], body[4:8])
            elif t == 0x52:
                code = unpack_from("!i", body)[0]
                pw = self._password or ""
                if code == 3:
                    self._writer.write(m.password(pw.encode()))
                elif code == 5:
                    self._writer.write(m.password(md5_password(self._user, pw, body[4:8])))
                elif code == 10:
                    if b"SCRAM-SHA-256\0" not in body[4:]:
                        raise ProtocolError("mirror store offers no supported SASL mechanism")
                    scram = ScramClient(pw)
                    self._writer.write(m.sasl_initial("SCRAM-SHA-256", scram.first_message()))
                elif code == 11 and scram:
                    self._writer.write(m.sasl_response(scram.final_message(body[4:])))
                elif code == 12 and scram:
                    scram.verify_final(body[4:])
                elif code != 0:
                    raise ProtocolError(f"unsupported authentication request {code}")

    # -- raw access for shadow reads (proxy/relay/shadow.py) ---------------------------

    def write(self, data: bytes) -> None:
        if self._writer is None:
            raise MirrorUnavailable("connection is closed")
        self._writer.write(data)

    def detach(self) -> tuple[asyncio.Transport, object]:
        """Hand the socket over (it becomes a client session's upstream); the
        second value must be kept as long as the socket is used (a StreamWriter
        closes its transport when it is garbage collected)."""
        writer, reader = self._writer, self._reader
        if writer is None or reader is None:
            raise MirrorUnavailable("connection is closed")
        if reader._buffer:  # type: ignore[attr-defined]  # nothing may be left unread
            raise ProtocolError("unread data on a connection being handed over")
        self._writer = None
        self._reader = None
        return writer.transport, writer  # type: ignore[return-value]

    @property
    def reader(self) -> asyncio.StreamReader:
        if self._reader is None:
            raise MirrorUnavailable("connection is closed")
        return self._reader

    async def read_message(self) -> tuple[int, bytes]:
        """The next backend message (type, body)."""
        return await self._read_message()

    async def run_prelude(self, prelude: tuple[str, ...]) -> None:
        if self.fresh and prelude:
            await self._run_prelude(prelude)
        self.fresh = False

    def close(self) -> None:
        """Close the socket; an apply in flight is given up (its callback is dropped)."""
        for closing in (self._writer, self._transport):
            if closing is None:
                continue
            try:
                if not closing.is_closing():
                    closing.write(m.TERMINATE)
                closing.close()
            except (OSError, RuntimeError):
                pass
        self._writer = None
        self._reader = None
        self._transport = None
        self._keep = None
        self._done = None
        self._tracker = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._statements.clear()

    # -- applying units (the socket read by a Protocol) ------------------------------------

    async def apply(self, unit: Unit, timeout: float) -> list[ItemResult]:
        """Apply one unit; return one result per item.  Raises MirrorUnavailable."""
        if not self.connected:
            raise MirrorUnavailable("mirror connection is closed")
        future: asyncio.Future[list[ItemResult]] = asyncio.get_running_loop().create_future()

        def applied(results: list[ItemResult] | None, exc: MirrorUnavailable | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                assert results is not None
                future.set_result(results)

        self.start(unit, timeout, applied)
        try:
            return await future
        except asyncio.CancelledError:
            self.close()  # the unit's answers would reach nobody
            raise

    def start(self, unit: Unit, timeout: float, done: Applied) -> None:
        """Send ``unit`` in one pipeline; ``done`` gets the results (or the failure)
        once the store has answered all of it.  One unit at a time: a unit that
        failed inside its transaction is rolled back before the next one."""
        if self._done is not None:
            raise RuntimeError("a unit is already being applied on this connection")
        loop = asyncio.get_running_loop()
        try:
            transport = self._transport or self._take_over()
        except (MirrorUnavailable, ProtocolError) as exc:
            loop.call_soon(done, None, MirrorUnavailable(f"mirror connection lost: {exc}"))
            return
        tracker = Tracker()
        out: list[bytes] = []
        if self.fresh:
            for sql in unit.prelude:  # the session's state, first on a new connection
                out.append(m.query(sql))
                tracker.request(Q)
        self.fresh = False
        self._results = self._pipeline(unit, tracker, out)
        self._unit = unit
        self._tracker = tracker
        self._completions = []
        self._phase = _APPLY
        self._done = done
        self._cancelled = False
        self._apply_timeout = timeout
        self._deadline = loop.time() + timeout
        if self._timer is None:
            # One timer per connection, not per unit: it fires at the first
            # deadline and re-arms for the unit then in flight, if any.
            self._timer = loop.call_at(self._deadline, self._check_deadline)
        transport.write(b"".join(out))

    def _take_over(self) -> asyncio.Transport:
        """From now on the socket is read by a Protocol: answers are taken as they
        arrive, without a coroutine step or a StreamReader read per chunk."""
        writer, reader = self._writer, self._reader
        if writer is None or reader is None or writer.is_closing():
            raise MirrorUnavailable("connection is closed")
        if reader._buffer:  # type: ignore[attr-defined]  # nothing may be left unread
            raise ProtocolError("unread data on the mirror connection")
        transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self._keep = writer  # a StreamWriter closes its transport when collected
        transport.set_protocol(_Answers(self))
        self._transport = transport
        self._writer = None
        self._reader = None
        return transport

    def _pipeline(self, unit: Unit, tracker: Tracker, out: list[bytes]) -> list[ItemResult]:
        results = [ItemResult() for _ in unit.items]
        extended_open = False
        for idx, item in enumerate(unit.items):
            if item.kind is ItemKind.EXECUTE:
                name = self._statements.get(item.parse_body)
                if name is None:
                    name = f"shadowproxy_{self._next_name}"
                    self._next_name += 1
                    out.append(m.parse(name, item.parse_body))
                    tracker.request(P, ("parse", item.parse_body, name))
                    self._statements[item.parse_body] = name
                out.append(m.bind(name, item.bind_body))
                tracker.request(B)
                out.append(m.EXECUTE_UNNAMED_ALL)
                tracker.request(E, idx)
                extended_open = True
                continue
            if extended_open:
                out.append(m.SYNC)
                tracker.request(S)
                extended_open = False
            out.append(m.query(item.sql))
            tracker.request(Q, idx)
            for chunk in item.copy_data:
                out.append(m.copy_data(chunk))
            if item.kind is ItemKind.COPY:
                out.append(m.COPY_DONE)
        if extended_open:
            out.append(m.SYNC)
            tracker.request(S)
        return results

    def _answers(self, data: bytes) -> None:
        tracker = self._tracker
        if tracker is None:
            return  # nothing asked (a notice, or the answers of an apply given up)
        try:
            for t, body in self._scanner.feed(data):
                if t == 0x53 or t == 0x4B:  # ParameterStatus, BackendKeyData
                    continue
                self._completions.extend(tracker.response(t, body))
        except ProtocolError as exc:
            self._fail(f"mirror connection lost: {exc!r}")
            return
        if not tracker.pending:
            self._phase_done()

    def _phase_done(self) -> None:
        transport = self._transport
        assert transport is not None and self._tracker is not None
        if self._phase == _APPLY:
            self._collect(self._completions)
            if self._cancelled and any(
                r.error is not None and r.error.get("C") == _QUERY_CANCELED for r in self._results
            ):
                # Our cancel took: the unit did not commit, the journal has it whole.
                self._fail(f"{self._too_slow()} (cancelled there)")
                return
            if self._tracker.status != ord("I"):
                # An error inside an explicit transaction left it open on the mirror.
                self._ask(_ROLLBACK, m.query("ROLLBACK"), [Q])
                return
        if self._phase != _TRIM and len(self._statements) > _STATEMENT_CACHE:
            out, kinds = [], []
            for body in list(self._statements)[: _STATEMENT_CACHE // 2]:
                out.append(m.close_statement(self._statements.pop(body)))
                kinds.append(ord("C"))
            out.append(m.SYNC)
            kinds.append(S)
            self._ask(_TRIM, b"".join(out), kinds)
            return
        self._settle()

    def _settle(self) -> None:
        """The unit's outcome is known: hand its results to the callback."""
        done, results = self._done, self._results
        self._done = None
        self._tracker = None
        self._unit = None
        self._completions = []
        self._results = []
        if done is not None:
            done(results, None)

    def _ask(self, phase: int, raw: bytes, kinds: list[int]) -> None:
        """One more round on the connection before the unit counts as applied."""
        tracker = Tracker()
        for kind in kinds:
            tracker.request(kind)
        self._tracker = tracker
        self._completions = []
        self._phase = phase
        assert self._transport is not None
        self._transport.write(raw)

    def _collect(self, completions: list[Any]) -> None:
        results = self._results
        for done in completions:
            req = done.request
            token: Any = req.token
            if isinstance(token, int):
                res = results[token]
                res.tags = req.tags
                res.skipped = req.skipped
                if req.error is not None:
                    res.error = error_fields(req.error)
                if _DROPS_STATEMENTS.intersection(req.tags):
                    # The client's DEALLOCATE ALL / DISCARD ALL (psycopg sends one after
                    # every rollback) also dropped this connection's own statements.
                    self._statements.clear()
            elif isinstance(token, tuple) and (req.error is not None or req.skipped):
                self._statements.pop(token[1], None)  # the Parse did not take

    def _check_deadline(self) -> None:
        self._timer = None
        if self._done is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            return
        if not self._cancelled:
            # The store may still be running the unit (waiting on a lock, say).  A
            # cancel is asynchronous: only the store's answer says whether the unit
            # rolled back or had committed already, so the connection waits for it
            # (were the unit journaled while the store commits it, replay would
            # apply it twice).
            self._cancelled = True
            self._deadline = loop.time() + self._timeout
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            task = loop.create_task(self.cancel())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            return
        log.error(
            "mirror store answered neither the unit nor its cancel within %gs: the unit is"
            " in doubt (journaled; if it committed there, replay reports a divergence)",
            self._apply_timeout + self._timeout,
        )
        self._fail(self._too_slow())

    def _too_slow(self) -> str:
        return f"mirror store did not answer within {self._apply_timeout:g}s"

    def _fail(self, reason: str) -> None:
        done = self._done
        self._done = None
        self.close()
        if done is not None:
            done(None, MirrorUnavailable(reason))

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._keep = None
        self._statements.clear()
        done, results = self._done, self._results
        if done is not None and self._known_on_loss():
            log.info("mirror store closed the connection after the unit's outcome was known")
            self.close()
            done(results, None)
            return
        self._fail(
            f"mirror connection lost: {exc!r}" if exc else "mirror store closed the connection"
        )

    def _known_on_loss(self) -> bool:
        """The connection died mid-unit: did the store settle the unit before?

        PostgreSQL sends a COMMIT's CommandComplete only once the commit is done
        (a failed transaction's COMMIT answers ROLLBACK), and a backend that is
        terminated flushes what it has buffered before its FATAL error.  So a
        unit whose final COMMIT was answered is applied, though the rest of its
        answers (the Sync's ReadyForQuery) never came: journaling it would apply
        it twice.  Likewise a single-statement autocommit Query commits before
        its CommandComplete is sent.  The ROLLBACK and Close rounds that follow
        a unit come after its outcome.  Anything else is in doubt: journaled.
        """
        if self._phase != _APPLY:
            return True
        unit, tracker = self._unit, self._tracker
        if unit is None or tracker is None or not unit.items:
            return False
        self._collect(self._completions)
        self._completions = []
        last = len(unit.items) - 1
        head = tracker.head
        res = self._results[last]
        if head is not None and head.token == last:
            res.tags = head.tags  # a Query's tags so far (its ReadyForQuery never came)
        tags = res.tags
        if res.error is not None or res.skipped or not tags:
            return False
        if unit.in_transaction:
            return tags[-1] == "COMMIT"
        item = unit.items[last]
        return last == 0 and item.kind is ItemKind.QUERY and len(item.tags) == 1 == len(tags)

    async def cancel(self) -> None:
        """Cancel what the store runs for this connection."""
        if self.backend_key is not None:
            await send_cancel(self._addr[0], self._addr[1], *self.backend_key, self._timeout)

    async def _run_prelude(self, prelude: tuple[str, ...]) -> None:
        assert self._writer is not None
        tracker = Tracker()
        for sql in prelude:
            self._writer.write(m.query(sql))
            tracker.request(Q)
        await self._drain_answers(tracker)

    async def _drain_answers(self, tracker: Tracker) -> list[Any]:
        assert self._reader is not None
        scanner = BackendScanner()
        completions = []
        while tracker.pending:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ProtocolError("mirror store closed the connection")
            for t, body in scanner.feed(chunk):
                if t in b"SK":
                    continue
                completions.extend(tracker.response(t, body))
        return completions


class _Answers(asyncio.Protocol):
    """Hands the mirror store's answers to their connection."""

    def __init__(self, conn: MirrorConnection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn._answers(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._lost(exc)
