"""The mirror store's answers stop partway through a unit.

A backend that is terminated (pg_terminate_backend, a restart) flushes the
answers it has buffered, then its FATAL error, then closes: the proxy may hold
the COMMIT's CommandComplete of a unit without the ReadyForQuery after it.
Such a unit is applied (PostgreSQL answers COMMIT only once it committed);
journaled, replay would apply it a second time.  Only a unit cut before its
outcome is in doubt.

A relay between the mirror connection and the real store forwards everything
and cuts the store's answers right after (or right before) a given message.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.mirror.unit import Item, ItemKind, Unit
from proxy.wire.pg._rows import parse_body
from tests.conftest import PG_HOST, PG_PORT, PG_USER, PgPair

_NO_PARAMETERS = b"\0\0\0\0\0\0"  # Bind: no formats, no values, text results


def command_complete(tag: str) -> bytes:
    raw = tag.encode() + b"\0"
    return b"C" + struct.pack("!I", 4 + len(raw)) + raw


class CuttingRelay:
    """Forwards a connection to the store; the store's answers end at ``marker``
    (after it with ``keep_marker``, before it otherwise)."""

    def __init__(self, marker: bytes, keep_marker: bool) -> None:
        self.marker = marker
        self.keep_marker = keep_marker
        self.cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        store_r, store_w = await asyncio.open_connection(PG_HOST, PG_PORT)
        up = asyncio.ensure_future(self._pipe(client_r, store_w))
        self._tasks.add(up)
        answers = b""
        try:
            while chunk := await store_r.read(65536):
                answers += chunk
                # Whole backend messages only: type byte, int32 length, body.
                while len(answers) >= 5:
                    size = 1 + struct.unpack_from("!I", answers, 1)[0]
                    if len(answers) < size:
                        break
                    message, answers = answers[:size], answers[size:]
                    if message == self.marker:
                        if self.keep_marker:
                            client_w.write(message)
                        await client_w.drain()
                        self.cut.set()
                        return
                    client_w.write(message)
        finally:
            client_w.close()
            store_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass


@pytest.fixture
async def table(pg_pair: PgPair) -> AsyncIterator[PgPair]:
    pg_pair.run_both("CREATE TABLE t (n int PRIMARY KEY)")
    yield pg_pair


def rows_on_new(pair: PgPair) -> list[int]:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pair.new) as c:
        return [n for (n,) in c.execute("SELECT n FROM t ORDER BY n").fetchall()]


def transaction_unit(commit: Item) -> Unit:
    items = [
        Item(ItemKind.QUERY, "BEGIN", tags=["BEGIN"]),
        Item(ItemKind.QUERY, "INSERT INTO t VALUES (1)", tags=["INSERT 0 1"]),
        commit,
    ]
    return Unit(1, 1, True, (), items, time.time())


EXTENDED_COMMIT = Item(
    ItemKind.EXECUTE, "COMMIT", parse_body("COMMIT"), _NO_PARAMETERS, tags=["COMMIT"]
)
SIMPLE_COMMIT = Item(ItemKind.QUERY, "COMMIT", tags=["COMMIT"])
AUTOCOMMIT_INSERT = Unit(
    1, 1, False, (), [Item(ItemKind.QUERY, "INSERT INTO t VALUES (1)", tags=["INSERT 0 1"])], 0.0
)


async def apply_through(pair: PgPair, relay: CuttingRelay, unit: Unit) -> list:
    port = await relay.start()
    conn = MirrorConnection("127.0.0.1", port, PG_USER, None, pair.new)
    try:
        await conn.connect()
        return await asyncio.wait_for(conn.apply(unit, 10), 10)
    finally:
        conn.close()
        await relay.close()


@pytest.mark.parametrize(
    ("unit", "marker"),
    [
        (transaction_unit(EXTENDED_COMMIT), command_complete("COMMIT")),
        (transaction_unit(SIMPLE_COMMIT), command_complete("COMMIT")),
        (AUTOCOMMIT_INSERT, command_complete("INSERT 0 1")),
    ],
    ids=["extended-commit", "simple-commit", "autocommit-query"],
)
async def test_a_unit_whose_commit_was_answered_is_applied(
    table: PgPair, unit: Unit, marker: bytes
) -> None:
    relay = CuttingRelay(marker, keep_marker=True)
    results = await apply_through(table, relay, unit)
    assert relay.cut.is_set(), "the store's answers were never cut"
    assert [r.tags for r in results] == [it.tags for it in unit.items]
    assert all(r.error is None and not r.skipped for r in results)
    assert rows_on_new(table) == [1]


async def test_a_unit_cut_before_its_commit_answer_is_in_doubt(table: PgPair) -> None:
    """Without the COMMIT's tag nothing says whether the store committed: the
    apply fails, and the unit goes to the journal (replay reports a duplicate
    as a divergence if it had committed)."""
    relay = CuttingRelay(command_complete("COMMIT"), keep_marker=False)
    with pytest.raises(MirrorUnavailable):
        await apply_through(table, relay, transaction_unit(EXTENDED_COMMIT))
    assert relay.cut.is_set()
