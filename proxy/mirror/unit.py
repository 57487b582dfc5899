"""What the mirror applies: units of ordered items.

A *unit* is what the authoritative store committed in one go: one explicit
transaction, or one autocommit statement (a simple Query, or an extended
Parse/Bind/Execute...Sync batch).  Units of a session are applied to the
mirror store in session order; a unit that cannot be applied live goes to the
durable journal whole.

Items keep the client's own wire bodies so the mirror re-sends what the client
sent (parameter formats and bytes untouched); only names are rewritten.
A unit is self-contained: it carries the session state (``prelude``) and the
statement text of every item, so it can be replayed on a fresh connection.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any


class ItemKind(enum.Enum):
    QUERY = "Q"  # simple-protocol Query: ``sql`` (may hold several statements)
    EXECUTE = "X"  # extended protocol: Parse body + Bind body, executed to completion
    COPY = "C"  # COPY ... FROM STDIN: ``sql`` plus the CopyData payloads


@dataclass(slots=True, init=False)
class Item:
    kind: ItemKind
    sql: str
    # EXECUTE: the Parse message body after the statement name
    # (query text NUL, int16 count, parameter type OIDs).
    parse_body: bytes
    # EXECUTE: the Bind message body after the portal and statement names
    # (parameter formats, values, result formats).
    bind_body: bytes
    # COPY: CopyData payloads in order.
    copy_data: list[bytes]
    # Command tags the authoritative store returned for this item, in order.
    tags: list[str]
    # Value pinning (never encoded: a unit is built with the pinned rows already
    # turned into the statements that write them): the plan (pinning.Plan or
    # Unpinnable), the rows the store returned and the format of their values.
    pin: Any
    pin_rows: list[list[bytes | None]] | None
    pin_fmt: int

    def __init__(
        self,
        kind: ItemKind,
        sql: str,
        parse_body: bytes = b"",
        bind_body: bytes = b"",
        copy_data: list[bytes] | None = None,
        tags: list[str] | None = None,
        pin: Any = None,
        pin_rows: list[list[bytes | None]] | None = None,
        pin_fmt: int = 0,
    ) -> None:
        # Hand-written: one per recorded statement, and mypyc compiles this one
        # (the dataclass-generated __init__ runs in the interpreter).
        self.kind = kind
        self.sql = sql
        self.parse_body = parse_body
        self.bind_body = bind_body
        self.copy_data = [] if copy_data is None else copy_data
        self.tags = [] if tags is None else tags
        self.pin = pin
        self.pin_rows = pin_rows
        self.pin_fmt = pin_fmt


@dataclass(slots=True, init=False)
class Unit:
    session_id: int
    seq: int  # per-session sequence number, strictly increasing
    in_transaction: bool  # apply inside BEGIN ... COMMIT on the mirror
    prelude: tuple[str, ...]  # session-state SQL (SET ...) in force for the unit
    items: list[Item]
    committed_at: float  # wall-clock time (time.time()) of the authoritative commit
    # Position in the authoritative commit order, across all sessions of this proxy.
    order: int
    # Every unit with ``order <= after`` committed before this unit's transaction
    # began, so it must reach the mirror first (causal order across sessions).
    after: int

    def __init__(
        self,
        session_id: int,
        seq: int,
        in_transaction: bool,
        prelude: tuple[str, ...],
        items: list[Item],
        committed_at: float,
        order: int = 0,
        after: int = 0,
    ) -> None:
        # Hand-written like Item's: one per mirrored transaction.
        self.session_id = session_id
        self.seq = seq
        self.in_transaction = in_transaction
        self.prelude = prelude
        self.items = items
        self.committed_at = committed_at
        self.order = order
        self.after = after

    @property
    def size(self) -> int:
        n = 0
        for it in self.items:
            n += len(it.sql) + len(it.parse_body) + len(it.bind_body)
            for chunk in it.copy_data:
                n += len(chunk)
        return n


# --- unit encoding ---------------------------------------------------------
#
# Little-endian, every length explicit, text as UTF-8 ("surrogatepass", so any
# Python str round-trips, including surrogate-escaped client bytes):
#
#   unit := version u8 | flags u8 | session_id i64 | seq i64 | order i64 | after i64
#           | committed_at f64
#           | n_prelude u32 | n_items u32 | n_prelude * text | n_items * item
#   item := kind u8 | len(sql) u32 | len(parse_body) u32 | len(bind_body) u32
#           | n_copy u32 | n_tags u32 | sql | parse_body | bind_body
#           | n_copy * blob | n_tags * text
#   blob := length u32 | bytes         text := blob of UTF-8

_ENCODING_VERSION = 1
_IN_TRANSACTION = 0x01
_UNIT_HEAD = struct.Struct("<BBqqqqdII")
_ITEM_HEAD = struct.Struct("<BIIIII")
_U32 = struct.Struct("<I")
_MAX_PAYLOAD = 0xFFFFFFFF

_KIND_CODE = {kind: ord(kind.value) for kind in ItemKind}
_KIND_BY_CODE = {code: kind for kind, code in _KIND_CODE.items()}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def encode_unit(unit: Unit) -> bytes:
    """Encode `unit` exactly; `decode_unit` gives back an equal `Unit`.

    Raises ValueError if a field does not fit the format (an integer outside
    int64, a field or the whole unit over 4 GiB).
    """
    flags = _IN_TRANSACTION if unit.in_transaction else 0
    try:
        parts = [
            _UNIT_HEAD.pack(
                _ENCODING_VERSION,
                flags,
                unit.session_id,
                unit.seq,
                unit.order,
                unit.after,
                unit.committed_at,
                len(unit.prelude),
                len(unit.items),
            )
        ]
        for statement in unit.prelude:
            raw = _utf8(statement)
            parts += (_U32.pack(len(raw)), raw)
        for item in unit.items:
            sql = _utf8(item.sql)
            parts.append(
                _ITEM_HEAD.pack(
                    _KIND_CODE[item.kind],
                    len(sql),
                    len(item.parse_body),
                    len(item.bind_body),
                    len(item.copy_data),
                    len(item.tags),
                )
            )
            parts += (sql, item.parse_body, item.bind_body)
            for chunk in item.copy_data:
                parts += (_U32.pack(len(chunk)), chunk)
            for tag in item.tags:
                raw = _utf8(tag)
                parts += (_U32.pack(len(raw)), raw)
    except struct.error as e:
        raise ValueError(f"unit {unit.session_id}/{unit.seq} cannot be encoded: {e}") from e
    payload = b"".join(parts)
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"unit {unit.session_id}/{unit.seq} encodes to more than 4 GiB")
    return payload


class _Reader:
    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            raise ValueError("truncated unit encoding")
        chunk = self._buf[self._pos : end]
        self._pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def blob(self) -> bytes:
        (n,) = self.unpack(_U32)
        return self.take(n)

    def text(self, n: int | None = None) -> str:
        raw = self.blob() if n is None else self.take(n)
        return raw.decode("utf-8", "surrogatepass")

    def finish(self) -> None:
        if self._pos != len(self._buf):
            raise ValueError(f"{len(self._buf) - self._pos} trailing bytes after unit encoding")


def decode_unit(payload: bytes) -> Unit:
    """Decode what `encode_unit` produced.  Raises ValueError on anything else."""
    r = _Reader(bytes(payload))
    version, flags, session_id, seq, order, after, committed_at, n_prelude, n_items = r.unpack(
        _UNIT_HEAD
    )
    if version != _ENCODING_VERSION:
        raise ValueError(f"unsupported unit encoding version {version}")
    if flags & ~_IN_TRANSACTION:
        raise ValueError(f"unknown unit flags {flags:#x}")
    prelude = tuple(r.text() for _ in range(n_prelude))
    items: list[Item] = []
    for _ in range(n_items):
        code, n_sql, n_parse, n_bind, n_copy, n_tags = r.unpack(_ITEM_HEAD)
        kind = _KIND_BY_CODE.get(code)
        if kind is None:
            raise ValueError(f"unknown item kind {code:#x}")
        sql = r.text(n_sql)
        parse_body = r.take(n_parse)
        bind_body = r.take(n_bind)
        copy_data = [r.blob() for _ in range(n_copy)]
        tags = [r.text() for _ in range(n_tags)]
        items.append(Item(kind, sql, parse_body, bind_body, copy_data, tags))
    r.finish()
    return Unit(
        session_id=session_id,
        seq=seq,
        in_transaction=bool(flags & _IN_TRANSACTION),
        prelude=prelude,
        items=items,
        committed_at=committed_at,
        order=order,
        after=after,
    )
