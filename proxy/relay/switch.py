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
from typing import TYPE_CHECKING, Any

from proxy.classify import Kind, classify
from proxy.mirror.connection import MirrorConnection
from proxy.mirror.pinning import Plan
from proxy.wire.pg import error_fields, split_messages
from proxy.wire.pg import messages as m
from proxy.wire.pg._rows import data_row_values, parse_body

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager
    from proxy.relay.client import ClientSession
    from proxy.settings import Dsn

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


async def learn(s: ClientSession, timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
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
    s: ClientSession,
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
