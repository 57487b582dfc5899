"""The proxy's own PostgreSQL connection to the mirror store.

It authenticates with the credentials of the mirror store's DSN (trust,
cleartext, md5 or SCRAM-SHA-256), then applies units: every item of a unit is
written in one pipeline and the answers are read back with the same sans-IO
tracker the relay uses.  Statement texts are prepared once per connection
under names of its own (the client's names mean nothing here).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from struct import unpack_from
from typing import Any

from proxy.mirror.unit import ItemKind, Unit
from proxy.wire.pg import BackendScanner, ProtocolError, Tracker, error_fields
from proxy.wire.pg import messages as m
from proxy.wire.pg._auth import ScramClient, md5_password
from proxy.wire.pg._tracker import B, E, P, Q, S

log = logging.getLogger(__name__)

_STATEMENT_CACHE = 2000
# Command tags of statements that drop every prepared statement of the connection.
_DROPS_STATEMENTS = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})


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


@dataclass(slots=True)
class ItemResult:
    tags: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    skipped: bool = False


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

    @property
    def connected(self) -> bool:
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
        if self._writer is not None:
            try:
                if not self._writer.is_closing():
                    self._writer.write(m.TERMINATE)
                self._writer.close()
            except (OSError, RuntimeError):
                pass
        self._writer = None
        self._reader = None
        self._statements.clear()

    async def apply(self, unit: Unit, timeout: float) -> list[ItemResult]:
        """Apply one unit; return one result per item.  Raises MirrorUnavailable."""
        if not self.connected:
            raise MirrorUnavailable("mirror connection is closed")
        try:
            # asyncio.timeout, not wait_for: wait_for runs the apply as a task of its
            # own, one more task and future per unit on the mirror's hot path.
            async with asyncio.timeout(timeout):
                if self.fresh and unit.prelude:
                    await self._run_prelude(unit.prelude)
                self.fresh = False
                return await self._apply(unit)
        except TimeoutError as exc:
            # The store may still be running the unit (waiting on a lock, say): were
            # it to commit after the unit went to the journal, replay would apply it
            # twice.  Cancelled first, it rolls back (unless it was already committing).
            await self.cancel()
            self.close()
            raise MirrorUnavailable(f"mirror store did not answer within {timeout:g}s") from exc
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            self.close()
            raise MirrorUnavailable(f"mirror connection lost: {exc!r}") from exc

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

    async def _apply(self, unit: Unit) -> list[ItemResult]:
        assert self._writer is not None
        results = [ItemResult() for _ in unit.items]
        tracker = Tracker()
        out: list[bytes] = []
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
        self._writer.write(b"".join(out))
        for done in await self._drain_answers(tracker):
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
        if tracker.status != ord("I"):
            # An error inside an explicit transaction left it open on the mirror.
            self._writer.write(m.query("ROLLBACK"))
            rollback = Tracker()
            rollback.request(Q)
            await self._drain_answers(rollback)
        if len(self._statements) > _STATEMENT_CACHE:
            await self._trim_statements()
        return results

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

    async def _trim_statements(self) -> None:
        assert self._writer is not None
        tracker = Tracker()
        for body in list(self._statements)[: _STATEMENT_CACHE // 2]:
            self._writer.write(m.close_statement(self._statements.pop(body)))
            tracker.request(ord("C"))
        self._writer.write(m.SYNC)
        tracker.request(S)
        await self._drain_answers(tracker)
