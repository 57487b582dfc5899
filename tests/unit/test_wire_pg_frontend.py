"""FrontendParser: client -> server bytes in, frozen events out.

Every input is built by hand with ``struct.pack`` (not with the project's own
builders), every expected event carries ``raw`` equal to the exact input bytes,
and the same streams are fed whole, byte by byte and in arbitrary chunkings.
"""

from __future__ import annotations

from struct import pack

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire.pg import FrontendParser, ProtocolError
from proxy.wire.pg import events as ev


def typed(t: bytes, body: bytes) -> bytes:
    """A typed message: type byte, int32 length (itself included), body."""
    return t + pack("!i", len(body) + 4) + body


def untyped(code: int, body: bytes = b"") -> bytes:
    """A startup packet: int32 length (itself included), int32 code, body."""
    return pack("!ii", len(body) + 8, code) + body


PROTOCOL_3_0 = 3 << 16
STARTUP = untyped(PROTOCOL_3_0, b"user\0alice\0database\0shop\0application_name\0psql\0\0")
SSL_REQUEST = pack("!ii", 8, 80877103)
GSSENC_REQUEST = pack("!ii", 8, 80877104)
CANCEL = pack("!iii", 16, 80877102, 4242) + b"\x01\x02\x03\x04"


def ready_parser(max_message_size: int = 1 << 30) -> FrontendParser:
    """A parser past the StartupMessage: every further message is typed."""
    p = FrontendParser(max_message_size)
    (startup,) = p.feed(STARTUP)
    assert type(startup) is ev.StartupMessage
    assert startup == ev.StartupMessage(
        STARTUP,
        PROTOCOL_3_0,
        (("user", "alice"), ("database", "shop"), ("application_name", "psql")),
    )
    assert not p.in_startup
    return p


def typed_events(events: list[ev.FrontendEvent]) -> list[tuple[type, ev.FrontendEvent]]:
    """Events with their classes: events are NamedTuples, equal to any same-valued tuple."""
    return [(type(e), e) for e in events]


def feed_bytewise(p: FrontendParser, data: bytes) -> list[ev.FrontendEvent]:
    out: list[ev.FrontendEvent] = []
    for i in range(len(data)):
        out.extend(p.feed(data[i : i + 1]))
    return out


# ----------------------------------------------------------------------- startup

_PARSE_BODY = b"INSERT INTO t VALUES ($1, $2)\0" + pack("!hII", 2, 23, 25)
_BIND_BODY = (
    pack("!hh", 1, 0)  # one parameter format code: text
    + pack("!h", 2)  # two parameter values
    + pack("!i", 2)
    + b"42"
    + pack("!i", -1)  # NULL
    + pack("!hh", 1, 1)  # one result format code: binary
)
_WEIRD = b"SELECT '\xff\xfe caf\xc3\xa9'"  # not valid UTF-8: must round-trip

STARTUP_TABLE: list[tuple[str, bytes, ev.FrontendEvent]] = [
    (
        "startup-3.0-params",
        STARTUP,
        ev.StartupMessage(
            STARTUP,
            PROTOCOL_3_0,
            (("user", "alice"), ("database", "shop"), ("application_name", "psql")),
        ),
    ),
    (
        "startup-3.2-user-only",
        untyped((3 << 16) | 2, b"user\0bob\0\0"),
        ev.StartupMessage(
            untyped((3 << 16) | 2, b"user\0bob\0\0"), (3 << 16) | 2, (("user", "bob"),)
        ),
    ),
    (
        "startup-empty-value-and-options",
        untyped(PROTOCOL_3_0, b"user\0u\0options\0-c geqo=off\0search_path\0\0\0"),
        ev.StartupMessage(
            untyped(PROTOCOL_3_0, b"user\0u\0options\0-c geqo=off\0search_path\0\0\0"),
            PROTOCOL_3_0,
            (("user", "u"), ("options", "-c geqo=off"), ("search_path", "")),
        ),
    ),
    ("ssl-request", SSL_REQUEST, ev.SSLRequest(SSL_REQUEST)),
    ("gssenc-request", GSSENC_REQUEST, ev.GSSENCRequest(GSSENC_REQUEST)),
    ("cancel-request", CANCEL, ev.CancelRequest(CANCEL, 4242, b"\x01\x02\x03\x04")),
    (
        "cancel-request-long-key",  # protocol 3.2 allows keys up to 256 bytes
        pack("!iii", 44, 80877102, -7) + bytes(range(32)),
        ev.CancelRequest(pack("!iii", 44, 80877102, -7) + bytes(range(32)), -7, bytes(range(32))),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [row[1:] for row in STARTUP_TABLE], ids=[row[0] for row in STARTUP_TABLE]
)
def test_startup_packet(data: bytes, expected: ev.FrontendEvent) -> None:
    whole = FrontendParser().feed(data)
    assert typed_events(whole) == typed_events([expected])
    assert whole[0].raw == data
    assert typed_events(feed_bytewise(FrontendParser(), data)) == typed_events([expected])


def test_startup_message_get() -> None:
    (msg,) = FrontendParser().feed(STARTUP)
    assert isinstance(msg, ev.StartupMessage)
    assert msg.get("database") == "shop"
    assert msg.get("user") == "alice"
    assert msg.get("client_encoding") == ""
    assert msg.get("client_encoding", "UTF8") == "UTF8"


def test_ssl_request_then_startup_in_one_chunk() -> None:
    p = FrontendParser()
    assert p.in_startup
    events = p.feed(SSL_REQUEST + STARTUP + typed(b"Q", b"SELECT 1\0"))
    assert [type(e) for e in events] == [ev.SSLRequest, ev.StartupMessage, ev.Query]
    assert b"".join(e.raw for e in events) == SSL_REQUEST + STARTUP + typed(b"Q", b"SELECT 1\0")
    assert not p.in_startup
    assert p.buffered == 0


def test_gssenc_then_ssl_then_startup() -> None:
    p = FrontendParser()
    assert typed_events(p.feed(GSSENC_REQUEST)) == typed_events([ev.GSSENCRequest(GSSENC_REQUEST)])
    assert p.in_startup  # still untyped after a negotiation request
    assert typed_events(p.feed(SSL_REQUEST)) == typed_events([ev.SSLRequest(SSL_REQUEST)])
    assert p.in_startup
    assert [type(e) for e in p.feed(STARTUP)] == [ev.StartupMessage]
    assert not p.in_startup


def test_nothing_after_a_cancel_request_is_parsed_in_the_same_call() -> None:
    p = FrontendParser()
    assert typed_events(p.feed(CANCEL + STARTUP)) == typed_events(
        [ev.CancelRequest(CANCEL, 4242, b"\x01\x02\x03\x04")]
    )
    assert p.buffered == len(STARTUP)


# ----------------------------------------------------------------------- typed messages

TYPED_TABLE: list[tuple[str, bytes, ev.FrontendEvent]] = []


def _row(name: str, raw: bytes, make: type, *fields: object) -> None:
    TYPED_TABLE.append((name, raw, make(raw, *fields)))


_row("query", typed(b"Q", b"SELECT 1\0"), ev.Query, "SELECT 1")
_row("query-empty", typed(b"Q", b"\0"), ev.Query, "")
_row("query-utf8", typed(b"Q", "SELECT 'café'\0".encode()), ev.Query, "SELECT 'café'")
_row(
    "query-not-utf8",
    typed(b"Q", _WEIRD + b"\0"),
    ev.Query,
    _WEIRD.decode("utf-8", "surrogateescape"),
)
_row(
    "parse-named",
    typed(b"P", b"s1\0" + _PARSE_BODY),
    ev.Parse,
    "s1",
    "INSERT INTO t VALUES ($1, $2)",
    _PARSE_BODY,
)
_row(
    "parse-unnamed-no-types",
    typed(b"P", b"\0SELECT now()\0\0\0"),
    ev.Parse,
    "",
    "SELECT now()",
    b"SELECT now()\0\0\0",
)
_row("bind-named", typed(b"B", b"p1\0s1\0" + _BIND_BODY), ev.Bind, "p1", "s1", _BIND_BODY)
_row(
    "bind-unnamed-no-params",
    typed(b"B", b"\0\0" + pack("!hhh", 0, 0, 0)),
    ev.Bind,
    "",
    "",
    pack("!hhh", 0, 0, 0),
)
_row("execute-unnamed-all", typed(b"E", b"\0" + pack("!i", 0)), ev.Execute, "", 0)
_row("execute-portal-limit", typed(b"E", b"p1\0" + pack("!i", 50)), ev.Execute, "p1", 50)
_row("describe-statement", typed(b"D", b"Ss1\0"), ev.Describe, "S", "s1")
_row("describe-unnamed-portal", typed(b"D", b"P\0"), ev.Describe, "P", "")
_row("close-statement", typed(b"C", b"Ss1\0"), ev.Close, "S", "s1")
_row("close-portal", typed(b"C", b"Pp1\0"), ev.Close, "P", "p1")
_row("sync", typed(b"S", b""), ev.Sync)
_row("flush", typed(b"H", b""), ev.Flush)
_row("terminate", typed(b"X", b""), ev.Terminate)
_row("copy-data", typed(b"d", b"1\tone\n2\ttwo\n"), ev.CopyData)
_row("copy-data-empty", typed(b"d", b""), ev.CopyData)
_row("copy-done", typed(b"c", b""), ev.CopyDone)
_row("copy-fail", typed(b"f", b"client gave up\0"), ev.CopyFail)
_row(
    "function-call",
    typed(b"F", pack("!ihhih", 1598, 0, 1, 4, 0) + b"\0\0\0\x07" + pack("!h", 0)),
    ev.FunctionCall,
)
_row("password", typed(b"p", b"md5" + b"0" * 32 + b"\0"), ev.AuthResponse)
_row("sasl-initial", typed(b"p", b"SCRAM-SHA-256\0" + pack("!i", 4) + b"n,,x"), ev.AuthResponse)


@pytest.mark.parametrize(
    ("data", "expected"), [row[1:] for row in TYPED_TABLE], ids=[row[0] for row in TYPED_TABLE]
)
def test_typed_message(data: bytes, expected: ev.FrontendEvent) -> None:
    p = ready_parser()
    events = p.feed(data)
    assert typed_events(events) == typed_events([expected])
    assert events[0].raw == data
    assert type(events[0].raw) is bytes
    assert p.buffered == 0
    assert typed_events(feed_bytewise(ready_parser(), data)) == typed_events([expected])


def test_decoded_sql_round_trips_to_the_client_bytes() -> None:
    (q,) = ready_parser().feed(typed(b"Q", _WEIRD + b"\0"))
    assert isinstance(q, ev.Query)
    assert q.sql.encode("utf-8", "surrogateescape") == _WEIRD


def test_copy_data_payload() -> None:
    (d,) = ready_parser().feed(typed(b"d", b"1\tone\n"))
    assert isinstance(d, ev.CopyData)
    assert d.data == b"1\tone\n"


def test_events_are_frozen() -> None:
    (q,) = ready_parser().feed(typed(b"Q", b"SELECT 1\0"))
    assert isinstance(q, ev.Query)
    with pytest.raises(AttributeError):
        q.sql = "DROP TABLE t"  # type: ignore[misc]


FULL_STREAM = STARTUP + b"".join(row[1] for row in TYPED_TABLE)


def _expected_stream_events() -> list[ev.FrontendEvent]:
    first = FrontendParser().feed(STARTUP)
    return first + [row[2] for row in TYPED_TABLE]


def test_several_messages_in_one_chunk() -> None:
    p = FrontendParser()
    events = p.feed(FULL_STREAM)
    assert typed_events(events) == typed_events(_expected_stream_events())
    assert b"".join(e.raw for e in events) == FULL_STREAM
    assert p.buffered == 0


def test_byte_at_a_time_gives_the_same_events() -> None:
    p = FrontendParser()
    assert typed_events(feed_bytewise(p, FULL_STREAM)) == typed_events(_expected_stream_events())
    assert p.buffered == 0


def test_partial_tail_is_kept_until_complete() -> None:
    q = typed(b"Q", b"SELECT 1\0")
    p = ready_parser()
    assert typed_events(p.feed(q + q[:3])) == typed_events([ev.Query(q, "SELECT 1")])
    assert p.buffered == 3
    assert p.feed(q[3:-1]) == []
    assert p.buffered == len(q) - 1
    assert typed_events(p.feed(q[-1:])) == typed_events([ev.Query(q, "SELECT 1")])
    assert p.buffered == 0


def test_empty_feed() -> None:
    p = ready_parser()
    assert p.feed(b"") == []
    assert FrontendParser().feed(b"") == []


# ----------------------------------------------------------------------- errors

STARTUP_ERRORS: list[tuple[str, bytes, str, str]] = [
    (
        "protocol-2",
        untyped(2 << 16, b"user\0alice\0\0"),
        "0A000",
        "unsupported frontend protocol 2.0",
    ),
    (
        "protocol-4",
        untyped(4 << 16, b"user\0alice\0\0"),
        "0A000",
        "unsupported frontend protocol 4.0",
    ),
    (
        "ssl-request-wrong-length",
        pack("!iii", 12, 80877103, 0),
        "0A000",
        "unsupported frontend protocol",
    ),
    (
        "missing-user",
        untyped(PROTOCOL_3_0, b"database\0shop\0\0"),
        "28000",
        "no PostgreSQL user name",
    ),
    ("no-params", untyped(PROTOCOL_3_0, b"\0"), "28000", "no PostgreSQL user name"),
    ("length-below-8", pack("!ii", 7, PROTOCOL_3_0), "08P01", "invalid length of startup packet"),
    ("length-negative", pack("!ii", -1, PROTOCOL_3_0), "08P01", "invalid length of startup packet"),
    (
        "length-over-10000",
        pack("!ii", 10_001, PROTOCOL_3_0),
        "08P01",
        "invalid length of startup packet",
    ),
    (
        "typed-before-startup",
        typed(b"Q", b"SELECT 1\0"),
        "08P01",
        "invalid length of startup packet",
    ),
    (
        "params-not-terminated",
        untyped(PROTOCOL_3_0, b"user\0alice\0"),
        "08P01",
        "startup packet is not terminated",
    ),
    ("no-params-no-terminator", untyped(PROTOCOL_3_0), "08P01", "startup packet is not terminated"),
    ("value-unterminated", untyped(PROTOCOL_3_0, b"user\0alice"), "08P01", "unterminated string"),
    ("key-without-value", untyped(PROTOCOL_3_0, b"user"), "08P01", "unterminated string"),
    ("cancel-too-short", pack("!iii", 12, 80877102, 1), "08P01", "invalid cancel request length"),
]


@pytest.mark.parametrize(
    ("data", "sqlstate", "message"),
    [row[1:] for row in STARTUP_ERRORS],
    ids=[row[0] for row in STARTUP_ERRORS],
)
def test_startup_error(data: bytes, sqlstate: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        FrontendParser().feed(data)
    assert info.value.sqlstate == sqlstate
    # Byte by byte: the same error, raised as soon as the packet can be judged.
    with pytest.raises(ProtocolError, match=message):
        feed_bytewise(FrontendParser(), data)


TYPED_ERRORS: list[tuple[str, bytes, str]] = [
    ("unknown-type", typed(b"z", b""), "invalid frontend message type 122"),
    ("type-nul", typed(b"\0", b""), "invalid frontend message type 0"),
    ("length-3", b"Q" + pack("!i", 3), "invalid message length 3"),
    ("length-0", b"S" + pack("!i", 0), "invalid message length 0"),
    ("length-negative", b"Q" + pack("!i", -5), "invalid message length -5"),
    ("query-unterminated", typed(b"Q", b"SELECT 1"), "unterminated string"),
    ("query-no-body", typed(b"Q", b""), "unterminated string"),
    ("parse-name-unterminated", typed(b"P", b"s1"), "unterminated string"),
    ("parse-sql-unterminated", typed(b"P", b"s1\0SELECT 1"), "invalid Parse message"),
    ("parse-no-type-count", typed(b"P", b"s1\0SELECT 1\0"), "invalid Parse message"),
    ("parse-half-type-count", typed(b"P", b"s1\0SELECT 1\0\0"), "invalid Parse message"),
    ("bind-portal-unterminated", typed(b"B", b"p1"), "unterminated string"),
    ("bind-statement-unterminated", typed(b"B", b"p1\0s1"), "unterminated string"),
    ("execute-portal-unterminated", typed(b"E", b"p1"), "invalid Execute message"),
    ("execute-short-limit", typed(b"E", b"\0\0\0"), "invalid Execute message"),
    (
        "execute-trailing-bytes",
        typed(b"E", b"\0" + pack("!i", 0) + b"\0"),
        "invalid Execute message",
    ),
    ("describe-bad-target", typed(b"D", b"X\0"), "invalid Describe/Close target"),
    ("describe-empty", typed(b"D", b""), "invalid Describe/Close target"),
    ("describe-no-name", typed(b"D", b"S"), "invalid Describe/Close target"),
    ("describe-name-unterminated", typed(b"D", b"Ss1"), "unterminated string"),
    ("close-bad-target", typed(b"C", b"Q\0"), "invalid Describe/Close target"),
    ("close-name-unterminated", typed(b"C", b"Pp1"), "unterminated string"),
]


@pytest.mark.parametrize(
    ("data", "message"), [row[1:] for row in TYPED_ERRORS], ids=[row[0] for row in TYPED_ERRORS]
)
def test_typed_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        ready_parser().feed(data)
    assert info.value.sqlstate == "08P01"
    with pytest.raises(ProtocolError, match=message):
        feed_bytewise(ready_parser(), data)


def test_oversized_message_fails_on_its_header_alone() -> None:
    p = ready_parser(max_message_size=100)
    # 101 bytes announced: refused before the body arrives (nothing is buffered for it).
    with pytest.raises(ProtocolError, match="exceeds the limit of 100") as info:
        p.feed(b"Q" + pack("!i", 101))
    assert info.value.sqlstate == "08P01"
    assert p.buffered == 0


def test_message_at_the_size_limit_is_accepted() -> None:
    sql = b"x" * 95  # 4 (length) + 95 + 1 (NUL) == 100
    raw = typed(b"Q", sql + b"\0")
    assert typed_events(ready_parser(max_message_size=100).feed(raw)) == typed_events(
        [ev.Query(raw, sql.decode())]
    )


def test_valid_messages_before_an_error_in_the_same_chunk_are_not_returned() -> None:
    p = ready_parser()
    with pytest.raises(ProtocolError):
        p.feed(typed(b"Q", b"SELECT 1\0") + typed(b"z", b""))


@pytest.mark.parametrize(
    "after",
    [b"", typed(b"Q", b"SELECT 1\0"), typed(b"S", b""), STARTUP],
    ids=["empty", "query", "sync", "startup"],
)
def test_parser_is_terminal_after_a_protocol_error(after: bytes) -> None:
    p = ready_parser()
    with pytest.raises(ProtocolError):
        p.feed(b"Q" + pack("!i", 2))
    assert p.buffered == 0
    with pytest.raises(ProtocolError, match="already failed"):
        p.feed(after)
    with pytest.raises(ProtocolError, match="already failed"):
        p.feed(after)


def test_startup_parser_is_terminal_after_a_protocol_error() -> None:
    p = FrontendParser()
    with pytest.raises(ProtocolError):
        p.feed(untyped(2 << 16, b"user\0alice\0\0"))
    with pytest.raises(ProtocolError, match="already failed"):
        p.feed(STARTUP)


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


def _feed_chunks(p: FrontendParser, chunks: list[bytes]) -> list[ev.FrontendEvent]:
    """Feed until the end or the first ProtocolError; anything else escapes."""
    events: list[ev.FrontendEvent] = []
    for chunk in chunks:
        try:
            events.extend(p.feed(chunk))
        except ProtocolError as exc:
            assert len(exc.sqlstate) == 5
            with pytest.raises(ProtocolError):
                p.feed(b"")
            break
    return events


def _cstr(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape") + b"\0"


_names = st.sampled_from(["", "s1", "p_9", "café", "\udcff"])
_blobs = st.binary(max_size=24)
_messages = st.one_of(
    _names.map(lambda s: typed(b"Q", _cstr(s))),
    st.tuples(_names, _names, st.lists(st.integers(0, 2**32 - 1), max_size=3)).map(
        lambda a: typed(b"P", _cstr(a[0]) + _cstr(a[1]) + pack(f"!h{len(a[2])}I", len(a[2]), *a[2]))
    ),
    st.tuples(_names, _names, _blobs).map(lambda a: typed(b"B", _cstr(a[0]) + _cstr(a[1]) + a[2])),
    st.tuples(_names, st.integers(-(2**31), 2**31 - 1)).map(
        lambda a: typed(b"E", _cstr(a[0]) + pack("!i", a[1]))
    ),
    st.tuples(st.sampled_from([b"D", b"C"]), st.sampled_from([b"S", b"P"]), _names).map(
        lambda a: typed(a[0], a[1] + _cstr(a[2]))
    ),
    st.sampled_from([b"S", b"H", b"X", b"c"]).map(lambda t: typed(t, b"")),
    st.tuples(st.sampled_from([b"d", b"f", b"F", b"p"]), _blobs).map(lambda a: typed(*a)),
)
_streams = st.lists(_messages, max_size=8).map(lambda ms: STARTUP + b"".join(ms))


@_FUZZ
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_fuzz_arbitrary_bytes_in_startup_only_raise_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    _feed_chunks(FrontendParser(), _chunks(data, cuts))


@_FUZZ
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    limit=st.sampled_from([16, 64, 1 << 30]),
)
def test_fuzz_arbitrary_bytes_after_startup_only_raise_protocol_error(
    data: bytes, cuts: list[int], limit: int
) -> None:
    _feed_chunks(ready_parser(limit), _chunks(data, cuts))


@_FUZZ
@given(stream=_streams, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_valid_streams_parse_identically_in_any_chunking(
    stream: bytes, cuts: list[int]
) -> None:
    whole = FrontendParser().feed(stream)
    p = FrontendParser()
    chunked = [e for chunk in _chunks(stream, cuts) for e in p.feed(chunk)]
    assert typed_events(chunked) == typed_events(whole)
    assert b"".join(e.raw for e in whole) == stream
    assert p.buffered == 0


@_FUZZ
@given(
    stream=_streams,
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 400), st.integers(0, 255)
        ),
        max_size=4,
    ),
    truncate=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_fuzz_mutated_streams_only_raise_protocol_error(
    stream: bytes, edits: list[tuple[str, int, int]], truncate: int, cuts: list[int]
) -> None:
    buf = bytearray(stream)
    for op, at, value in edits:
        at = at % (len(buf) + 1)
        if op == "insert":
            buf.insert(at, value)
        elif at < len(buf):
            if op == "flip":
                buf[at] ^= value or 1
            else:
                del buf[at]
    data = bytes(buf[: max(len(buf) - truncate, 0)] if truncate % 3 == 0 else buf)
    events = _feed_chunks(FrontendParser(), _chunks(data, cuts))
    # Whatever was accepted is an exact prefix of the stream: the relay forwards raw bytes.
    assert data.startswith(b"".join(e.raw for e in events))
