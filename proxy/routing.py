"""The cutover ladder and the pure routing decision.

``decide(mode, kind, in_transaction, read_only)`` says which store answers a
statement, which store receives the mirrored copy of a write, and which store
(if any) runs a shadow copy of a read for comparison.  It has no state and no
I/O, so the whole table is unit-tested; the relay only executes its answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxy.classify import Kind


class Store(enum.Enum):
    OLD = "old"
    NEW = "new"

    @property
    def other(self) -> Store:
        return Store.NEW if self is Store.OLD else Store.OLD


class Mode(enum.Enum):
    OLD_ONLY = "old-only"
    DUAL_WRITE = "dual-write"
    SHADOW_READ = "shadow-read"
    READ_NEW = "read-new"
    WRITE_NEW = "write-new"
    NEW_ONLY = "new-only"

    @property
    def authoritative(self) -> Store:
        return Store.NEW if self in (Mode.WRITE_NEW, Mode.NEW_ONLY) else Store.OLD

    @property
    def read_store(self) -> Store:
        return (
            Store.OLD if self in (Mode.OLD_ONLY, Mode.DUAL_WRITE, Mode.SHADOW_READ) else Store.NEW
        )

    @property
    def mirror_store(self) -> Store | None:
        if self in (Mode.OLD_ONLY, Mode.NEW_ONLY):
            return None
        return self.authoritative.other

    @property
    def shadow_reads(self) -> bool:
        return self in (Mode.SHADOW_READ, Mode.READ_NEW, Mode.WRITE_NEW)

    @property
    def index(self) -> int:
        return LADDER.index(self)


LADDER: tuple[Mode, ...] = tuple(Mode)


@dataclass(frozen=True, slots=True)
class Route:
    target: Store  # the store whose answer the client receives
    mirror: Store | None  # the store that also applies the statement (writes)
    shadow: Store | None  # the store that re-runs a read for comparison


def decide(mode: Mode, kind: Kind, in_transaction: bool, read_only: bool = False) -> Route:
    """Route one statement.

    Inside an explicit transaction everything goes to the authoritative store
    (read-your-writes) unless the transaction is read only.  Anything that is
    not a plain read changes state somewhere, so it is mirrored: writes, DDL,
    transaction control and session state (SET, PREPARE...) alike, because the
    mirror connection must follow the same session and transaction shape.
    """
    auth = mode.authoritative
    if kind is Kind.READ:
        if in_transaction and not read_only:
            return Route(auth, None, None)
        target = mode.read_store
        shadow = target.other if mode.shadow_reads and not in_transaction else None
        return Route(target, None, shadow)
    return Route(auth, mode.mirror_store, None)
