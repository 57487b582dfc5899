"""FrameChecker: the header-only walk of the client stream when nothing is mirrored."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire.pg import FrameChecker, FrontendParser, ProtocolError
from proxy.wire.pg import messages as m


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


PARSE = m.parse("s1", b"SELECT $1\0\0\0")
BIND = msg(b"B", b"\0s1\0\0\0\0\0\0\0")
EXECUTE = m.EXECUTE_UNNAMED_ALL
STREAM = PARSE + BIND + msg(b"D", b"P\0") + EXECUTE + m.SYNC + m.query("SELECT 1") + m.FLUSH

MESSAGES = st.sampled_from(
    [
        PARSE,
        BIND,
        EXECUTE,
        m.SYNC,
        m.FLUSH,
        m.query("UPDATE t SET v = 1"),
        msg(b"C", b"S\0"),
        msg(b"d", b"x" * 300),
        msg(b"c"),
        msg(b"F", b"\0\0\0\1\0\0\0\0\0\0"),
    ]
)


def batches_of(stream: bytes) -> int:
    """Reference: count batch ends with the full parser."""
    parser = FrontendParser()
    parser.feed(m.startup_message({"user": "u"}))
    return sum(type(e).__name__ in ("Sync", "Query", "FunctionCall") for e in parser.feed(stream))


def test_whole_stream() -> None:
    assert FrameChecker(1 << 20).feed(STREAM) == 2  # one Sync, one Query


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_two_chunk_split(cut: int) -> None:
    c = FrameChecker(1 << 20)
    assert c.feed(STREAM[:cut]) + c.feed(STREAM[cut:]) == 2


def test_byte_at_a_time() -> None:
    c = FrameChecker(1 << 20)
    assert sum(c.feed(STREAM[i : i + 1]) for i in range(len(STREAM))) == 2


def test_buffered_tail_from_the_startup_parser() -> None:
    c = FrameChecker(1 << 20, buffered=m.SYNC[:3])
    assert c.feed(m.SYNC[3:] + m.SYNC) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (msg(b"\x01"), "invalid frontend message type 1"),
        (b"Q" + struct.pack("!i", 3), "invalid message length 3"),
        (b"Q" + struct.pack("!i", -1), "invalid message length -1"),
        (b"Q" + struct.pack("!i", 2000), "exceeds the limit of 1024"),
        (m.SYNC + b"Z" + struct.pack("!i", 4), "invalid frontend message type 90"),
    ],
)
def test_bad_frames_are_protocol_errors(data: bytes, message: str) -> None:
    for chunks in ([data], [data[:2], data[2:]], [bytes([b]) for b in data]):
        c = FrameChecker(1024)
        with pytest.raises(ProtocolError, match=message) as err:
            for chunk in chunks:
                c.feed(chunk)
        assert err.value.sqlstate == "08P01"


@settings(max_examples=150, deadline=None)
@given(st.lists(MESSAGES, max_size=30), st.lists(st.integers(0, 400), max_size=6))
def test_agrees_with_the_full_parser(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    c = FrameChecker(1 << 20)
    assert sum(c.feed(chunk) for chunk in chunks) == batches_of(stream)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    c = FrameChecker(1 << 16)
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        c.feed(data)
