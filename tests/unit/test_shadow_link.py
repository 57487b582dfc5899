"""The shadow link's answer handling, pipelining and timeouts, against loopback
peers that play the shadow store's part byte for byte (no database: what is
tested is what the link does with the bytes, and with silence)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.relay.shadow_link import Digest, Link, Sweeper
from proxy.wire.pg import messages as m
from proxy.wire.pg import split_messages


def _answer(value: bytes) -> bytes:
    row_description = (
        b"T\x00\x00\x00\x1a\x00\x01v\x00\x00\x00\x40\x00\x00\x02\x00\x00\x00\x17\x00\x04"
        b"\xff\xff\xff\xff\x00\x00"
    )
    data_row = b"D" + (10 + len(value)).to_bytes(4, "big") + b"\x00\x01"
    data_row += len(value).to_bytes(4, "big") + value
    return row_description + data_row + b"C\x00\x00\x00\x0dSELECT 1\x00" + b"Z\x00\x00\x00\x05I"


ANSWER = _answer(b"7")


def _expected(answer: bytes) -> Digest:
    d = Digest(False)
    messages, rest = split_messages(answer)
    assert rest == b""
    for t, raw in messages:
        d.take(t, raw[5:])
    return d


def _settle(fut: asyncio.Future[tuple[Digest | None, float]]) -> Any:
    def done(d: Digest | None, took: float) -> None:
        if not fut.done():
            fut.set_result((d, took))

    return done


async def _link_to(handler: Any, sweeper: Sweeper) -> tuple[Link, asyncio.Server]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = Link(None, sweeper)
    await asyncio.get_running_loop().create_connection(lambda: link, "127.0.0.1", port)
    sweeper.add(link)
    return link, server


def _future() -> asyncio.Future[tuple[Digest | None, float]]:
    return asyncio.get_running_loop().create_future()


async def test_an_answer_split_anywhere_is_digested_whole() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        for i in range(len(ANSWER)):  # one byte per write: every split of the stream
            writer.write(ANSWER[i : i + 1])
            await writer.drain()
        await reader.read(100)

    sweeper = Sweeper(timeout=5.0)
    link, server = await _link_to(answer, sweeper)
    got = _future()
    link.send(m.query("SELECT v FROM t"), Digest(False), _settle(got))
    digest, _ = await asyncio.wait_for(got, 5)
    assert digest is not None
    assert (digest.columns, digest.rows, digest.error) == ([(b"v", 23)], 1, "")
    assert digest.same(_expected(ANSWER))
    assert not link.waiting  # answered: nothing left to time out
    link.close()
    server.close()


async def test_pipelined_reads_get_their_own_answers_in_order_and_their_own_time() -> None:
    """Two reads sent back to back, answered by the store one after the other:
    each digest is its own answer, and the second read's time on the store
    starts when the first answer ended, not when it was sent."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(0.3)  # the first read is slow
        writer.write(_answer(b"1") + _answer(b"22"))  # the second one is not
        await writer.drain()
        await reader.read(100)

    sweeper = Sweeper(timeout=5.0)
    link, server = await _link_to(answer, sweeper)
    first, second = _future(), _future()
    link.send(m.query("SELECT 1"), Digest(False), _settle(first))
    link.send(m.query("SELECT 22"), Digest(False), _settle(second))
    (d1, took1), (d2, took2) = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert d1 is not None and d2 is not None
    assert d1.same(_expected(_answer(b"1"))) and not d1.same(d2)
    assert d2.same(_expected(_answer(b"22")))
    assert took1 >= 0.3 and took2 < 0.1, (took1, took2)
    link.close()
    server.close()


async def test_a_silent_store_times_every_read_out_and_closes_the_link() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(10)

    sweeper = Sweeper(timeout=0.2)
    link, server = await _link_to(silent, sweeper)
    first, second = _future(), _future()
    loop = asyncio.get_running_loop()
    started = loop.time()
    link.send(m.query("SELECT v FROM t"), Digest(False), _settle(first))
    link.send(m.query("SELECT w FROM t"), Digest(False), _settle(second))
    got = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [d for d, _ in got] == [None, None]  # ended as errors, not hung
    waited = loop.time() - started
    assert 0.2 <= waited < 1.0, waited  # after the deadline, within a sweep or two
    assert not link.usable
    assert not sweeper.links
    server.close()


async def test_an_idle_link_is_closed() -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)

    sweeper = Sweeper(timeout=0.2, idle=0.3)
    link, server = await _link_to(idle, sweeper)
    for _ in range(50):
        if not link.usable:
            break
        await asyncio.sleep(0.05)
    assert not link.usable and not sweeper.links
    server.close()


async def test_a_statement_is_prepared_once_and_prepared_again_after_an_error() -> None:
    link = Link(None, Sweeper())
    parse_body = b"SELECT v FROM t WHERE id = $1\x00\x00\x01\x00\x00\x00\x17"
    bind_body = b"\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00"
    first, bound = link.request("SELECT v FROM t WHERE id = $1", parse_body, bind_body)
    assert first.startswith(m.parse("shadowproxy_s0", parse_body)) and bound == parse_body
    again, _ = link.request("SELECT v FROM t WHERE id = $1", parse_body, bind_body)
    assert again.startswith(m.bind("shadowproxy_s0", bind_body))  # no Parse this time
    # The answer to a read of it is an error: the next read prepares it anew.
    failed = Digest(False)
    failed.error = "42P01"
    link.waiting.append((failed, lambda d, took: None, 0.0, bound))
    link._answered()
    third, _ = link.request("SELECT v FROM t WHERE id = $1", parse_body, bind_body)
    assert third.startswith(m.parse("shadowproxy_s1", parse_body))
    # Past the link's bound a new statement is parsed unnamed, on every read.
    link.named = 64
    other = b"SELECT w FROM t WHERE id = $1\x00\x00\x01\x00\x00\x00\x17"
    full, bound = link.request("SELECT w FROM t WHERE id = $1", other, bind_body)
    assert full.startswith(m.parse("", other) + m.bind("", bind_body)) and bound is None
    assert other not in link.statements
    # A query is sent as it is.
    assert link.request("SELECT 1", None, None) == (m.query("SELECT 1"), None)


async def test_closing_the_pool_cancels_a_connection_being_opened() -> None:
    """At shutdown a shadow connection still being opened (here the store never
    answers the startup) is abandoned, not left to finish after the proxy."""
    from proxy.mirror.connection import MirrorConnection
    from proxy.relay.shadow_link import LinkPool

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = LinkPool(lambda params: MirrorConnection("127.0.0.1", port, "u", None, "d", params), 2)
    called: list[Link | None] = []
    assert pool.open(((), ()), {}, called.append)
    await asyncio.sleep(0.1)
    [task] = pool._tasks
    pool.close()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not pool.opening and not pool.links and called == []
    server.close()
