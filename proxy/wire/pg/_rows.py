"""Row-level message surgery for value pinning: split columns off rows.

A pinned statement returns the client's columns, a marker column, then the
table's columns.  These functions cut DataRow and RowDescription messages at
a column index (the client keeps what comes before it) and read and write the
result-format codes of a Bind body.  Values are never decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from struct import Struct, error
from typing import Final, ParamSpec, TypeVar

from proxy.wire.pg._errors import ProtocolError

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _checked(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A body shorter than its own counts and lengths is a protocol error."""

    @wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except (error, ValueError, IndexError) as exc:
            raise ProtocolError(f"malformed message body: {exc}") from None

    return run


def _end(body: bytes, start: int, length: int) -> int:
    end = start if length < 0 else start + length
    if end > len(body):
        raise ProtocolError("value runs past the end of the message")
    return end


_I16: Final = Struct("!h")
_U16: Final = Struct("!H")
_I32: Final = Struct("!i")
_U32: Final = Struct("!I")
NO_DATA: Final = b"n\x00\x00\x00\x04"


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


@_checked
def data_row_split(body: bytes, keep: int) -> tuple[bytes, list[bytes | None]]:
    """A DataRow body -> (the DataRow message of its first ``keep`` columns,
    the values after column ``keep`` (the marker), None for NULL)."""
    n = _U16.unpack_from(body, 0)[0]
    if keep < 0 or keep >= n:
        raise ProtocolError(f"pinned row has {n} columns, expected more than {keep}")
    pos = 2
    cut = 2
    values: list[bytes | None] = []
    for i in range(n):
        length = _I32.unpack_from(body, pos)[0]
        start = pos + 4
        end = _end(body, start, length)
        if i == keep:
            cut = pos
        elif i > keep:
            values.append(None if length < 0 else body[start:end])
        pos = end
    return _msg(b"D", _U16.pack(keep) + body[2:cut]), values


@_checked
def data_row_values(body: bytes) -> list[bytes | None]:
    """Every value of a DataRow body, None for NULL."""
    n = _U16.unpack_from(body, 0)[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(n):
        length = _I32.unpack_from(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : _end(body, pos, length)])
            pos += length
    return values


@_checked
def row_description_cut(body: bytes, marker: str) -> tuple[int, bytes]:
    """A RowDescription body -> (index of the ``marker`` column, the message
    describing only the columns before it)."""
    n = _U16.unpack_from(body, 0)[0]
    pos = 2
    wanted = marker.encode()
    for i in range(n):
        nul = body.index(b"\0", pos)
        if body[pos:nul] == wanted:
            return i, _msg(b"T", _U16.pack(i) + body[2:pos])
        pos = nul + 1 + 18
    raise ProtocolError("pinned statement without its marker column")


@_checked
def bind_result_formats(body: bytes) -> tuple[int, list[int]]:
    """A Bind body after the names -> (offset of its result-format count, codes)."""
    pos = 0
    nfmt = _U16.unpack_from(body, pos)[0]
    pos += 2 + 2 * nfmt
    nparams = _U16.unpack_from(body, pos)[0]
    pos += 2
    for _ in range(nparams):
        length = _I32.unpack_from(body, pos)[0]
        pos = _end(body, pos + 4, length)
    nres = _U16.unpack_from(body, pos)[0]
    if pos + 2 + 2 * nres > len(body):
        raise ProtocolError("result formats run past the end of the Bind")
    codes = [_I16.unpack_from(body, pos + 2 + 2 * i)[0] for i in range(nres)]
    return pos, codes


def bind_with_result_formats(body: bytes, offset: int, codes: list[int]) -> bytes:
    return body[:offset] + _U16.pack(len(codes)) + b"".join(_I16.pack(c) for c in codes)


def parse_body(sql: str, nparams: int = 0, oids: tuple[int, ...] | list[int] = ()) -> bytes:
    """Body of a Parse after its name: ``oids`` as the parameter types, else
    ``nparams`` types left to the server (0)."""
    head = sql.encode("utf-8", "surrogateescape") + b"\0"
    if oids:
        return head + _U16.pack(len(oids)) + b"".join(_U32.pack(o) for o in oids)
    return head + _U16.pack(nparams) + b"\0" * (4 * nparams)


def bind_body(values: list[bytes | None], fmt: int) -> bytes:
    """Body of a Bind after its names: every parameter in format ``fmt``, text results."""
    out = [_U16.pack(1), _I16.pack(fmt), _U16.pack(len(values))]
    for v in values:
        if v is None:
            out.append(b"\xff\xff\xff\xff")
        else:
            out.append(_I32.pack(len(v)))
            out.append(v)
    out.append(_U16.pack(0))
    return b"".join(out)
