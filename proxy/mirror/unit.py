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
from dataclasses import dataclass, field


class ItemKind(enum.Enum):
    QUERY = "Q"  # simple-protocol Query: ``sql`` (may hold several statements)
    EXECUTE = "X"  # extended protocol: Parse body + Bind body, executed to completion
    COPY = "C"  # COPY ... FROM STDIN: ``sql`` plus the CopyData payloads


@dataclass(slots=True)
class Item:
    kind: ItemKind
    sql: str
    # EXECUTE: the Parse message body after the statement name
    # (query text NUL, int16 count, parameter type OIDs).
    parse_body: bytes = b""
    # EXECUTE: the Bind message body after the portal and statement names
    # (parameter formats, values, result formats).
    bind_body: bytes = b""
    # COPY: CopyData payloads in order.
    copy_data: list[bytes] = field(default_factory=list)
    # Command tags the authoritative store returned for this item, in order.
    tags: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Unit:
    session_id: int
    seq: int  # per-session sequence number, strictly increasing
    in_transaction: bool  # apply inside BEGIN ... COMMIT on the mirror
    prelude: tuple[str, ...]  # session-state SQL (SET ...) in force for the unit
    items: list[Item]
    committed_at: float  # wall-clock time (time.time()) of the authoritative commit
    # Position in the authoritative commit order, across all sessions of this proxy.
    order: int = 0
    # Every unit with ``order <= after`` committed before this unit's transaction
    # began, so it must reach the mirror first (causal order across sessions).
    after: int = 0

    @property
    def size(self) -> int:
        n = 0
        for it in self.items:
            n += len(it.sql) + len(it.parse_body) + len(it.bind_body)
            for chunk in it.copy_data:
                n += len(chunk)
        return n
