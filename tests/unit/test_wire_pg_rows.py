"""Row surgery for value pinning: DataRow / RowDescription cuts, Bind result formats.

Every expected message is written out byte by byte; the bodies under test are
built here by hand from the protocol's layout, never by the module itself.
"""

from __future__ import annotations

from struct import pack
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.pg import ProtocolError
from proxy.wire.pg._rows import (
    NO_DATA,
    bind_body,
    bind_result_formats,
    bind_with_result_formats,
    data_row_split,
    data_row_values,
    parse_body,
    row_description_cut,
)

MARKER = "__shadowproxy_pin"


def data_row(*cols: bytes | None) -> bytes:
    """A DataRow body: int16 count, then per column int32 length (-1: NULL) and bytes."""
    out = pack("!H", len(cols))
    for c in cols:
        out += pack("!i", -1) if c is None else pack("!i", len(c)) + c
    return out


def field(name: str, type_oid: int = 25) -> bytes:
    """One RowDescription field: name NUL, table oid, attnum, type oid, typlen, typmod, format."""
    return name.encode() + b"\0" + pack("!ihihih", 0, 0, type_oid, -1, -1, 0)


def row_description(*names: str) -> bytes:
    return pack("!H", len(names)) + b"".join(field(n) for n in names)


# --------------------------------------------------------------------- DataRow split

SPLITS = [
    pytest.param(
        data_row(b"7", None, b"7", b"2024-01-01"),
        1,
        b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x017",
        [b"7", b"2024-01-01"],
        id="one-client-column",
    ),
    pytest.param(
        data_row(None, b"7", b"x"),
        0,
        b"D\x00\x00\x00\x06\x00\x00",
        [b"7", b"x"],
        id="keep-0-marker-first",
    ),
    pytest.param(
        data_row(b"a", b"", None, None, b"", b"z"),
        2,
        b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x00",
        [None, b"", b"z"],
        id="empty-strings-and-nulls",
    ),
    pytest.param(
        data_row(None, None, None),
        2,
        b"D\x00\x00\x00\x0e\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff",
        [],
        id="marker-last-client-nulls",
    ),
    pytest.param(
        data_row(b"x", b"yy", None),
        2,
        b"D\x00\x00\x00\x11\x00\x02\x00\x00\x00\x01x\x00\x00\x00\x02yy",
        [],
        id="keep-at-last-client-column",
    ),
    pytest.param(
        data_row(b"\x00\x01", None, b"\xff" * 3),
        1,
        b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x02\x00\x01",
        [b"\xff\xff\xff"],
        id="binary-values",
    ),
]


@pytest.mark.parametrize(("body", "keep", "client", "values"), SPLITS)
def test_data_row_split(body: bytes, keep: int, client: bytes, values: list[bytes | None]) -> None:
    assert data_row_split(body, keep) == (client, values)


@pytest.mark.parametrize("keep", [-1, 3, 4, 100])
def test_data_row_split_keep_out_of_range(keep: int) -> None:
    with pytest.raises(ProtocolError, match="3 columns"):
        data_row_split(data_row(b"a", None, b"b"), keep)


def test_data_row_split_of_an_empty_row() -> None:
    with pytest.raises(ProtocolError):
        data_row_split(data_row(), 0)


# Rows of up to 6 columns (NULL, empty or up to 5 bytes); the marker column is
# drawn at a random position and is NULL, as the pinned statement returns it.
CELLS = st.one_of(st.none(), st.binary(max_size=5))


@given(st.lists(CELLS, max_size=6), st.lists(CELLS, max_size=6))
def test_split_reassembles_the_row(client: list[bytes | None], rest: list[bytes | None]) -> None:
    body = data_row(*client, None, *rest)
    message, values = data_row_split(body, len(client))
    assert message[:1] == b"D"
    assert int.from_bytes(message[1:5], "big") == len(message) - 1
    assert message[5:] == data_row(*client)
    assert values == rest
    # The client's part, the marker and the values give back the original body.
    assert data_row(*client, None, *values) == body
    assert data_row_values(body) == [*client, None, *rest]


@pytest.mark.parametrize(
    ("body", "values"),
    [
        (data_row(), []),
        (data_row(None), [None]),
        (data_row(b"", None, b"a\x00b"), [b"", None, b"a\x00b"]),
        (b"\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff", [b"hi", None]),
    ],
)
def test_data_row_values(body: bytes, values: list[bytes | None]) -> None:
    assert data_row_values(body) == values


# ------------------------------------------------------------ RowDescription cut

CUTS = [
    pytest.param((MARKER, "id", "ts"), 0, id="marker-first"),
    pytest.param(("id", "total", MARKER, "id", "total"), 2, id="marker-middle"),
    pytest.param(("id", "name", MARKER), 2, id="marker-last"),
    pytest.param(("__shadowproxy", MARKER + "x", MARKER, "a"), 2, id="prefix-names-skipped"),
]


@pytest.mark.parametrize(("names", "index"), CUTS)
def test_row_description_cut(names: tuple[str, ...], index: int) -> None:
    kept = b"".join(field(n) for n in names[:index])
    body = 2 + len(kept)
    expected = b"T" + pack("!i", body + 4) + pack("!H", index) + kept
    assert row_description_cut(row_description(*names), MARKER) == (index, expected)


def test_row_description_cut_exact_bytes() -> None:
    got = row_description_cut(row_description("n", MARKER, "n"), MARKER)
    assert got == (
        1,
        b"T\x00\x00\x00\x1a\x00\x01n\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00",
    )


@pytest.mark.parametrize("names", [(), ("id",), ("id", "__shadowproxy_pi", "x")])
def test_row_description_without_marker(names: tuple[str, ...]) -> None:
    with pytest.raises(ProtocolError, match="marker"):
        row_description_cut(row_description(*names), MARKER)


# ------------------------------------------------------------ Bind result formats


def bind(
    param_fmts: list[int], params: list[bytes | None], result_fmts: list[int]
) -> tuple[bytes, int]:
    """A Bind body after the names, and the offset of its result-format count."""
    head = pack("!H", len(param_fmts)) + b"".join(pack("!h", f) for f in param_fmts)
    head += pack("!H", len(params))
    for p in params:
        head += pack("!i", -1) if p is None else pack("!i", len(p)) + p
    tail = pack("!H", len(result_fmts)) + b"".join(pack("!h", f) for f in result_fmts)
    return head + tail, len(head)


BINDS = [
    pytest.param([], [], [], id="nothing"),
    pytest.param([0], [b"42"], [1], id="one-text-param-one-binary-result"),
    pytest.param([1], [b"\x00\x00\x00\x2a", None], [0, 1, 1], id="binary-param-and-null"),
    pytest.param([0, 1], [None, b"\x01", b""], [1, 0], id="per-param-formats"),
    pytest.param([], [None, None], [0, 0, 0, 0], id="all-null"),
]


@pytest.mark.parametrize(("param_fmts", "params", "result_fmts"), BINDS)
def test_bind_result_formats(
    param_fmts: list[int], params: list[bytes | None], result_fmts: list[int]
) -> None:
    body, offset = bind(param_fmts, params, result_fmts)
    assert bind_result_formats(body) == (offset, result_fmts)


@pytest.mark.parametrize("new", [[], [0], [1], [1, 0, 1, 0]])
@pytest.mark.parametrize(("param_fmts", "params", "result_fmts"), BINDS)
def test_bind_with_result_formats_round_trip(
    param_fmts: list[int], params: list[bytes | None], result_fmts: list[int], new: list[int]
) -> None:
    body, offset = bind(param_fmts, params, result_fmts)
    changed = bind_with_result_formats(body, offset, new)
    assert changed == bind(param_fmts, params, new)[0]
    assert bind_result_formats(changed) == (offset, new)


def test_bind_with_result_formats_exact_bytes() -> None:
    body = b"\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00"  # no formats, one NULL, text results
    assert bind_result_formats(body) == (8, [])
    assert bind_with_result_formats(body, 8, [1, 0]) == body[:8] + b"\x00\x02\x00\x01\x00\x00"


# ------------------------------------------------------------ Parse / Bind bodies

PARSES = [
    pytest.param("SELECT 1", 0, b"SELECT 1\x00\x00\x00", id="no-params"),
    pytest.param(
        "SELECT $1, $2",
        2,
        b"SELECT $1, $2\x00\x00\x02" + b"\x00" * 8,
        id="two-untyped-params",
    ),
    pytest.param("SELECT 'é'", 0, b"SELECT '\xc3\xa9'\x00\x00\x00", id="utf8"),
    pytest.param("SELECT '\udcff'", 0, b"SELECT '\xff'\x00\x00\x00", id="surrogate-escaped-byte"),
]


@pytest.mark.parametrize(("sql", "nparams", "expected"), PARSES)
def test_parse_body(sql: str, nparams: int, expected: bytes) -> None:
    assert parse_body(sql, nparams) == expected


BIND_BODIES = [
    pytest.param([], 0, b"\x00\x01\x00\x00\x00\x00\x00\x00", id="no-values"),
    pytest.param(
        [b"42", None, b""],
        0,
        b"\x00\x01\x00\x00\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00",
        id="text-null-empty",
    ),
    pytest.param(
        [b"\x00\x00\x00\x07"],
        1,
        b"\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\x00\x00\x00\x07\x00\x00",
        id="binary",
    ),
]


@pytest.mark.parametrize(("values", "fmt", "expected"), BIND_BODIES)
def test_bind_body(values: list[bytes | None], fmt: int, expected: bytes) -> None:
    body = bind_body(values, fmt)
    assert body == expected
    # Text results: the count of result formats is 0, at the end.
    assert bind_result_formats(body) == (len(body) - 2, [])


def test_no_data_message() -> None:
    assert NO_DATA == b"n\x00\x00\x00\x04"


# ------------------------------------------------------------ malformed input

MALFORMED = [
    pytest.param(bind_result_formats, (b"\x00\x01",), id="bind-format-count-past-end"),
    pytest.param(
        bind_result_formats,
        (b"\x00\x00\x00\x01\x00\x00\x00\x05ab",),
        id="bind-value-past-end",
    ),
    pytest.param(data_row_split, (b"", 0), id="data-row-empty"),
    pytest.param(data_row_split, (b"\x00\x03\x00\x00\x00\x05ab", 0), id="data-row-column-missing"),
    pytest.param(
        data_row_split,
        (b"\x00\x02\xff\xff\xff\xff\x00\x00\x00\x05ab", 0),
        id="data-row-value-past-end",
    ),
    pytest.param(row_description_cut, (b"\x00\x01abc", MARKER), id="row-description-no-nul"),
]


@pytest.mark.parametrize(("function", "args"), MALFORMED)
def test_malformed_bodies_raise_protocol_error(function: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(ProtocolError):
        function(*args)
