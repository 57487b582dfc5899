"""Routing: every mode of the cutover ladder against the DESIGN.md mode table.

The expectations come from the table below, copied from DESIGN.md ("Modes"), and
from its rules, never from proxy.routing itself:

- autocommit reads and reads in a read-only transaction go to the read store;
- reads inside a read-write transaction go to the authoritative store
  (read-your-writes) and are never shadowed;
- everything else (writes, DDL, session state, transaction control) goes to the
  authoritative store and is mirrored to the other store, except in old-only
  and new-only;
- shadow reads (autocommit reads only) in shadow-read, read-new and write-new.
"""

from __future__ import annotations

import pytest

from proxy.classify import Kind
from proxy.routing import LADDER, Mode, Route, Store, decide

OLD, NEW = Store.OLD, Store.NEW

#          mode           reads served by  authoritative  mirrored to  shadow reads on
TABLE: dict[str, tuple[Store, Store, Store | None, Store | None]] = {
    "old-only":    (OLD,             OLD,           None,        None),
    "dual-write":  (OLD,             OLD,           NEW,         None),
    "shadow-read": (OLD,             OLD,           NEW,         NEW),
    "read-new":    (NEW,             OLD,           NEW,         OLD),
    "write-new":   (NEW,             NEW,           OLD,         OLD),
    "new-only":    (NEW,             NEW,           None,        None),
}  # fmt: skip

AUTOCOMMIT, READ_WRITE_TXN, READ_ONLY_TXN = "autocommit", "read-write txn", "read-only txn"
# (in_transaction, read_only) for each session state
STATES = {
    AUTOCOMMIT: [(False, False), (False, True)],
    READ_WRITE_TXN: [(True, False)],
    READ_ONLY_TXN: [(True, True)],
}
NOT_READS = [Kind.WRITE, Kind.DDL, Kind.SESSION, Kind.TXN]


def expected(mode: str, kind: Kind, state: str) -> Route:
    read_store, authoritative, mirror, shadow = TABLE[mode]
    if kind is not Kind.READ:
        return Route(target=authoritative, mirror=mirror, shadow=None)
    if state == AUTOCOMMIT:
        return Route(target=read_store, mirror=None, shadow=shadow)
    if state == READ_WRITE_TXN:
        return Route(target=authoritative, mirror=None, shadow=None)
    return Route(target=read_store, mirror=None, shadow=None)  # read-only transaction


CASES = [
    (mode, kind, state, in_txn, read_only)
    for mode in TABLE
    for kind in Kind
    for state, flags in STATES.items()
    for in_txn, read_only in flags
]


def test_table_covers_every_mode_and_kind() -> None:
    assert set(TABLE) == {m.value for m in Mode}
    assert len(CASES) == 6 * 5 * 4


def test_ladder_order_matches_design() -> None:
    assert [m.value for m in LADDER] == list(TABLE)


@pytest.mark.parametrize(
    ("mode", "kind", "state", "in_txn", "read_only"),
    CASES,
    ids=[f"{m}-{k.value}-{s}-ro={ro}" for m, k, s, _, ro in CASES],
)
def test_decide(mode: str, kind: Kind, state: str, in_txn: bool, read_only: bool) -> None:
    assert decide(Mode(mode), kind, in_txn, read_only) == expected(mode, kind, state)


@pytest.mark.parametrize("mode", list(TABLE))
def test_mode_properties_match_table(mode: str) -> None:
    read_store, authoritative, mirror, shadow = TABLE[mode]
    m = Mode(mode)
    assert m.read_store is read_store
    assert m.authoritative is authoritative
    assert m.mirror_store is mirror
    assert m.shadow_reads is (shadow is not None)


@pytest.mark.parametrize("mode", list(TABLE))
def test_reads_in_read_write_transaction_stay_on_authoritative(mode: str) -> None:
    route = decide(Mode(mode), Kind.READ, in_transaction=True, read_only=False)
    assert route.target is TABLE[mode][1]
    assert route.mirror is None and route.shadow is None


@pytest.mark.parametrize("mode", list(TABLE))
@pytest.mark.parametrize("kind", NOT_READS)
def test_state_changes_reach_both_stores_until_the_ends(mode: str, kind: Kind) -> None:
    for in_txn in (False, True):
        route = decide(Mode(mode), kind, in_txn)
        assert route.shadow is None
        if mode in ("old-only", "new-only"):
            assert route.mirror is None
        else:
            assert route.mirror is not None and route.mirror is not route.target


def test_read_store_always_received_the_transaction_shape() -> None:
    # A read-only transaction is served by the read store, so BEGIN (TXN) must
    # have reached it: the read store is the authoritative store or the mirror.
    for mode in TABLE:
        begin = decide(Mode(mode), Kind.TXN, in_transaction=False)
        read = decide(Mode(mode), Kind.READ, in_transaction=True, read_only=True)
        assert read.target in (begin.target, begin.mirror)


def test_store_other() -> None:
    assert OLD.other is NEW and NEW.other is OLD


def test_a_few_rows_spelled_out() -> None:
    assert decide(Mode.DUAL_WRITE, Kind.WRITE, False) == Route(OLD, NEW, None)
    assert decide(Mode.SHADOW_READ, Kind.READ, False) == Route(OLD, None, NEW)
    assert decide(Mode.READ_NEW, Kind.READ, False) == Route(NEW, None, OLD)
    assert decide(Mode.READ_NEW, Kind.READ, True) == Route(OLD, None, None)
    assert decide(Mode.WRITE_NEW, Kind.DDL, True) == Route(NEW, OLD, None)
    assert decide(Mode.NEW_ONLY, Kind.SESSION, False) == Route(NEW, None, None)
    assert decide(Mode.OLD_ONLY, Kind.READ, False) == Route(OLD, None, None)
