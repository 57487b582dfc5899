"""The shadow link's answer handling and its timeout, against loopback peers
that play the shadow store's part byte for byte (no database: what is tested
is what the link does with the bytes, and with silence)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.relay.shadow import Digest, Sweeper, _Link
from proxy.wire.pg import messages as m

ROW_DESCRIPTION = (
    b"T\x00\x00\x00\x1a\x00\x01v\x00\x00\x00\x40\x00\x00\x02\x00\x00\x00\x17\x00\x04"
    b"\xff\xff\xff\xff\x00\x00"
)
DATA_ROW = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x017"
ANSWER = ROW_DESCRIPTION + DATA_ROW + b"C\x00\x00\x00\x0dSELECT 1\x00" + b"Z\x00\x00\x00\x05I"


def _settle(fut: asyncio.Future[Digest | None]) -> Any:
    def done(d: Digest | None) -> None:
        if not fut.done():
            fut.set_result(d)

    return done


async def _link_to(handler: Any, sweeper: Sweeper) -> tuple[_Link, asyncio.Server]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = _Link(None, sweeper)
    await asyncio.get_running_loop().create_connection(lambda: link, "127.0.0.1", port)
    return link, server


async def test_an_answer_split_anywhere_is_digested_whole() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        for i in range(len(ANSWER)):  # one byte per write: every split of the stream
            writer.write(ANSWER[i : i + 1])
            await writer.drain()
        await reader.read(100)

    sweeper = Sweeper(timeout=5.0)
    link, server = await _link_to(answer, sweeper)
    got: asyncio.Future[Digest | None] = asyncio.get_running_loop().create_future()
    link.send(m.query("SELECT v FROM t"), Digest(False), _settle(got))
    digest = await asyncio.wait_for(got, 5)
    expected = Digest(False)
    expected.describe(ROW_DESCRIPTION[5:])
    expected.add(DATA_ROW[5:])
    assert digest is not None
    assert (digest.columns, digest.rows, digest.error) == ([(b"v", 23)], 1, "")
    assert digest.same(expected)
    assert not sweeper.links  # answered: nothing left to time out
    link.close()
    server.close()


async def test_a_silent_store_times_the_read_out_and_closes_the_link() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(10)

    sweeper = Sweeper(timeout=0.2)
    link, server = await _link_to(silent, sweeper)
    got: asyncio.Future[Digest | None] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    started = loop.time()
    link.send(m.query("SELECT v FROM t"), Digest(False), _settle(got))
    assert await asyncio.wait_for(got, 5) is None  # ended as an error, not hung
    waited = loop.time() - started
    assert 0.2 <= waited < 1.0, waited  # after the deadline, within a sweep or two
    assert not link.usable
    assert not sweeper.links
    server.close()
