"""BackendScanner, split_messages, error_fields, command_tag: server -> client bytes.

Server responses are built by hand with ``struct.pack`` the way PostgreSQL
sends them, then fed whole, split at every position, byte by byte and in
arbitrary chunkings: the scanner must report exactly the same messages.
"""

from __future__ import annotations

import contextlib
from struct import pack

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire.pg import (
    BOUNDARIES,
    OUTCOMES,
    TRACKED,
    BackendScanner,
    ProtocolError,
    command_tag,
    error_fields,
    split_messages,
)


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + pack("!i", len(body) + 4) + body


def row_description(*names: str) -> bytes:
    fields = b"".join(
        n.encode() + b"\0" + pack("!IhIhih", 16384, i + 1, 23, 4, -1, 0)
        for i, n in enumerate(names)
    )
    return msg(b"T", pack("!h", len(names)) + fields)


def data_row(*values: bytes | None) -> bytes:
    cols = b"".join(pack("!i", -1) if v is None else pack("!i", len(v)) + v for v in values)
    return msg(b"D", pack("!h", len(values)) + cols)


def ch(c: str) -> int:
    return ord(c)


PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
CLOSE_COMPLETE = msg(b"3")
NO_DATA = msg(b"n")
EMPTY_QUERY = msg(b"I")
PORTAL_SUSPENDED = msg(b"s")
READY_IDLE = msg(b"Z", b"I")
ERROR_BODY = (
    b"SERROR\0VERROR\0C23505\0"
    b'Mduplicate key value violates unique constraint "t_pkey"\0'
    b"DKey (id)=(1) already exists.\0Fnbtinsert.c\0L664\0R_bt_check_unique\0\0"
)
NOTICE = msg(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0")
NOTIFICATION = msg(b"A", pack("!i", 99) + b"chan\0payload\0")
PARAMETER_STATUS = msg(b"S", b"TimeZone\0UTC\0")

# An extended-protocol SELECT returning three rows, as PostgreSQL sends it.
SELECT_3 = (
    PARSE_COMPLETE
    + BIND_COMPLETE
    + row_description("id", "name")
    + data_row(b"1", b"one")
    + data_row(b"2", None)
    + data_row(b"3", b"three")
    + msg(b"C", b"SELECT 3\0")
    + READY_IDLE
)
SELECT_3_REPORTED = [
    (ch("1"), b""),
    (ch("2"), b""),
    (ch("T"), b""),
    (ch("C"), b"SELECT 3\0"),
    (ch("Z"), b"I"),
]

# A mixed stream: every tracked type, and untracked ones in between.
MIXED = (
    PARSE_COMPLETE
    + msg(b"t", pack("!hI", 1, 23))
    + NO_DATA
    + BIND_COMPLETE
    + NOTICE
    + EMPTY_QUERY
    + PORTAL_SUSPENDED
    + CLOSE_COMPLETE
    + msg(b"G", pack("!bh", 0, 0))
    + msg(b"H", pack("!bhh", 0, 1, 0))
    + msg(b"d", b"1\tone\n")
    + msg(b"c")
    + msg(b"W", pack("!bh", 0, 0))
    + msg(b"V", pack("!i", 2) + b"42")
    + NOTIFICATION
    + msg(b"E", ERROR_BODY)
    + PARAMETER_STATUS
    + msg(b"K", pack("!i", 1234) + b"\xaa\xbb\xcc\xdd")
    + msg(b"R", pack("!i", 0))
    + msg(b"C", b"INSERT 0 1\0")
    + msg(b"Z", b"T")
)
MIXED_REPORTED = [
    (ch("1"), b""),
    (ch("t"), b""),
    (ch("n"), b""),
    (ch("2"), b""),
    (ch("I"), b""),
    (ch("s"), b""),
    (ch("3"), b""),
    (ch("G"), b""),
    (ch("H"), b""),
    (ch("c"), b""),
    (ch("W"), b""),
    (ch("V"), b""),
    (ch("E"), ERROR_BODY),
    (ch("S"), b"TimeZone\0UTC\0"),
    (ch("K"), pack("!i", 1234) + b"\xaa\xbb\xcc\xdd"),
    (ch("R"), pack("!i", 0)),
    (ch("C"), b"INSERT 0 1\0"),
    (ch("Z"), b"T"),
]

STREAMS = [
    pytest.param(SELECT_3, SELECT_3_REPORTED, id="select-3-rows"),
    pytest.param(MIXED, MIXED_REPORTED, id="every-tracked-type"),
]


def feed_all(s: BackendScanner, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    return [m for chunk in chunks for m in s.feed(chunk)]


def as_bytes(reported: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(t, bytes(body)) for t, body in reported]


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
def test_whole_stream(stream: bytes, expected: list[tuple[int, bytes]]) -> None:
    assert as_bytes(BackendScanner().feed(stream)) == expected


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
def test_every_split_into_two_chunks(stream: bytes, expected: list[tuple[int, bytes]]) -> None:
    for i in range(len(stream) + 1):
        s = BackendScanner()
        assert as_bytes(feed_all(s, [stream[:i], stream[i:]])) == expected, f"split at {i}"
        # Nothing is left over: the next stream starts clean.
        assert as_bytes(s.feed(READY_IDLE)) == [(ch("Z"), b"I")]


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
def test_byte_at_a_time(stream: bytes, expected: list[tuple[int, bytes]]) -> None:
    s = BackendScanner()
    assert as_bytes(feed_all(s, [stream[i : i + 1] for i in range(len(stream))])) == expected
    assert as_bytes(s.feed(READY_IDLE)) == [(ch("Z"), b"I")]


def test_untracked_messages_are_not_reported() -> None:
    stream = data_row(b"x") + NOTICE + NOTIFICATION + msg(b"d", b"row\n") + msg(b"v", b"\0\0\0\0")
    assert BackendScanner().feed(stream) == []


def test_large_data_row_straddling_many_chunks_is_skipped() -> None:
    # The row's payload is full of bytes that look like tracked messages: the
    # scanner must skip it by its length, never look inside it.
    fake = (READY_IDLE + msg(b"C", b"DELETE 9\0") + msg(b"E", ERROR_BODY)) * 20_000
    big = data_row(fake)
    stream = msg(b"C", b"SELECT 0\0") + big + msg(b"C", b"SELECT 1\0") + READY_IDLE
    s = BackendScanner()
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(stream), 4096):
        chunk = stream[i : i + 4096]
        got = s.feed(chunk)
        out.extend(got)
    assert as_bytes(out) == [
        (ch("C"), b"SELECT 0\0"),
        (ch("C"), b"SELECT 1\0"),
        (ch("Z"), b"I"),
    ]
    assert len(big) > 1_000_000


def test_data_row_header_split_then_body_in_one_big_chunk() -> None:
    big = data_row(b"z" * 100_000)
    s = BackendScanner()
    assert s.feed(big[:3]) == []
    assert s.feed(big[3:50_000]) == []
    assert s.feed(big[50_000:] + READY_IDLE) == [(ch("Z"), b"I")]


def test_type_only_message_is_reported_as_soon_as_its_header_arrives() -> None:
    desc = row_description(*(f"column_{i}" for i in range(200)))
    s = BackendScanner()
    assert s.feed(desc[:4]) == []
    assert s.feed(desc[4:5]) == [(ch("T"), b"")]  # header complete: reported once
    assert s.feed(desc[5:100]) == []
    assert s.feed(desc[100:] + msg(b"C", b"SELECT 0\0")) == [(ch("C"), b"SELECT 0\0")]


def test_message_with_body_waits_for_the_whole_body() -> None:
    cc = msg(b"C", b"UPDATE 12\0")
    s = BackendScanner()
    assert s.feed(cc[:-1]) == []
    assert as_bytes(s.feed(cc[-1:])) == [(ch("C"), b"UPDATE 12\0")]


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"Z" + pack("!i", 3), 3),
        (b"D" + pack("!i", 0), 0),
        (b"C" + pack("!i", -1), -1),
        (b"D" + pack("!i", (1 << 30) + 1), (1 << 30) + 1),
    ],
    ids=["tracked-3", "untracked-0", "negative", "over-1GiB"],
)
def test_bad_length_raises(data: bytes, length: int) -> None:
    with pytest.raises(ProtocolError, match=f"invalid backend message length {length}") as info:
        BackendScanner().feed(READY_IDLE + data)
    assert info.value.sqlstate == "08P01"


def test_boundaries_only_scanner() -> None:
    s = BackendScanner(BOUNDARIES)
    # Without mirroring only CommandComplete and ReadyForQuery (with bodies),
    # PortalSuspended and ErrorResponse (types only) are reported, whatever the
    # chunking.
    expected = [
        (t, body if t in (ch("C"), ch("Z")) else b"")
        for t, body in MIXED_REPORTED
        if t in (ch("C"), ch("Z"), ch("s"), ch("E"))
    ]
    assert [t for t, _ in expected].count(ch("Z")) == 1
    for cut in range(1, len(MIXED)):
        s = BackendScanner(BOUNDARIES)
        assert as_bytes(feed_all(s, [MIXED[:cut], MIXED[cut:]])) == expected
    assert BOUNDARIES <= TRACKED


def test_tracked_set_can_change_between_messages() -> None:
    s = BackendScanner(BOUNDARIES)
    assert as_bytes(s.feed(msg(b"T", b"\0\0") + READY_IDLE)) == [(ch("Z"), b"I")]
    s.tracked = TRACKED
    assert as_bytes(s.feed(msg(b"T", b"\0\0") + READY_IDLE)) == [
        (ch("T"), b""),
        (ch("Z"), b"I"),
    ]


# ----------------------------------------------------------------------- split_messages


def test_split_messages_during_authentication() -> None:
    sasl = msg(b"R", pack("!i", 10) + b"SCRAM-SHA-256\0\0")
    ok = msg(b"R", pack("!i", 0))
    key = msg(b"K", pack("!i", 4242) + b"\x01\x02\x03\x04")
    tail = READY_IDLE[:3]
    out, rest = split_messages(sasl + ok + PARAMETER_STATUS + key + tail)
    assert out == [
        (ch("R"), sasl),
        (ch("R"), ok),
        (ch("S"), PARAMETER_STATUS),
        (ch("K"), key),
    ]
    assert rest == tail
    assert split_messages(rest + READY_IDLE[3:]) == ([(ch("Z"), READY_IDLE)], b"")


@pytest.mark.parametrize("data", [b"", b"R", b"R\0\0\0", b"R\0\0\0\x08\0\0"])
def test_split_messages_incomplete(data: bytes) -> None:
    assert split_messages(data) == ([], data)


@pytest.mark.parametrize("length", [3, -8, (1 << 30) + 1])
def test_split_messages_bad_length(length: int) -> None:
    with pytest.raises(ProtocolError, match="invalid backend message length"):
        split_messages(READY_IDLE + b"R" + pack("!i", length))


# ----------------------------------------------------------------------- error_fields, command_tag


def test_error_fields_of_a_server_error() -> None:
    assert error_fields(ERROR_BODY) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "23505",
        "M": 'duplicate key value violates unique constraint "t_pkey"',
        "D": "Key (id)=(1) already exists.",
        "F": "nbtinsert.c",
        "L": "664",
        "R": "_bt_check_unique",
    }


def test_error_fields_edge_cases() -> None:
    assert error_fields(b"") == {}
    assert error_fields(b"\0") == {}
    assert error_fields(b"M\0\0") == {"M": ""}
    assert error_fields(b"Mcaf\xc3\xa9 \xff\0\0") == {"M": "café \ufffd"}


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        (b"SELECT 3\0", "SELECT 3"),
        (b"INSERT 0 1\0", "INSERT 0 1"),
        (b"COMMIT\0", "COMMIT"),
        (b"ROLLBACK\0", "ROLLBACK"),
        (b"COPY 1000000\0", "COPY 1000000"),
        (b"BEGIN", "BEGIN"),
        (b"", ""),
    ],
)
def test_command_tag(body: bytes, tag: str) -> None:
    assert command_tag(body) == tag


def test_scanner_bodies_feed_command_tag_and_error_fields() -> None:
    out = BackendScanner().feed(msg(b"C", b"UPDATE 7\0") + msg(b"E", ERROR_BODY))
    assert command_tag(out[0][1]) == "UPDATE 7"
    assert error_fields(out[1][1])["C"] == "23505"


# ----------------------------------------------------------------------- fuzz

_FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, prev = [], 0
    for c in points:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


_backend_messages = st.tuples(
    st.sampled_from(sorted(set(b"123nsITtGHWcVZCEKSRDNAdv"))), st.binary(max_size=12)
).map(lambda a: msg(bytes([a[0]]), a[1]))


@_FUZZ
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_fuzz_arbitrary_bytes_only_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    for feed in (BackendScanner().feed, BackendScanner(BOUNDARIES).feed):
        with contextlib.suppress(ProtocolError):
            for chunk in _chunks(data, cuts):
                feed(chunk)
    with contextlib.suppress(ProtocolError):
        split_messages(data)
    error_fields(data)
    command_tag(data)


@_FUZZ
@given(
    messages=st.lists(_backend_messages, max_size=12),
    cuts=st.lists(st.integers(0, 300), max_size=10),
)
def test_fuzz_any_chunking_reports_the_same(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    whole = as_bytes(BackendScanner().feed(stream))
    expected = [(m[0], m[5:] if m[0] in b"ZCEKSR" else b"") for m in messages if m[0] in TRACKED]
    assert whole == expected
    assert as_bytes(feed_all(BackendScanner(), _chunks(stream, cuts))) == expected
    assert split_messages(stream) == ([(m[0], m) for m in messages], b"")


def test_digest_rows_hands_over_rows_with_their_bodies_then_stops() -> None:
    desc = row_description("id", "v")
    row = data_row(b"7", None)
    stream = PARSE_COMPLETE + desc + row + msg(b"C", b"SELECT 1\0") + READY_IDLE
    # Every split: the row's body arrives whole, once, in order with the outcomes.
    for cut in range(len(stream) + 1):
        s = BackendScanner(OUTCOMES)
        s.digest_rows(True)
        got = as_bytes(feed_all(s, [stream[:cut], stream[cut:]]))
        assert got == [
            (ch("T"), desc[5:]),
            (ch("D"), b"\0\x02\0\0\0\x017\xff\xff\xff\xff"),
            (ch("C"), b"SELECT 1\0"),
            (ch("Z"), b"I"),
        ], cut
    s.digest_rows(False)
    assert as_bytes(s.feed(desc + row + READY_IDLE)) == [(ch("Z"), b"I")]
