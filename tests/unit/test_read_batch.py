"""Which head of a session's held requests may run on the read store (read-new)."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from proxy.classify import Kind
from proxy.relay.reads import read_batch
from proxy.wire.pg import events as ev


def parse(sql: str, name: str = "") -> ev.Parse:
    return ev.Parse(b"P", name, sql, sql.encode() + b"\0\0\0")


def bind(statement: str = "", portal: str = "") -> ev.Bind:
    return ev.Bind(b"B", portal, statement, b"\0\0\0\0\0\0")


EXEC = ev.Execute(b"E", "", 0)
SYNC = ev.Sync(b"S")
FLUSH = ev.Flush(b"H")
DESCRIBE = ev.Describe(b"D", "P", "")
PREPARED = {"sel": ("SELECT 1", b"", Kind.READ), "ins": ("INSERT ...", b"", Kind.WRITE)}

CASES: list[tuple[str, list[Any], int]] = [
    ("simple read", [ev.Query(b"Q", "SELECT 1"), ev.Query(b"Q", "SELECT 2")], 1),
    ("simple write", [ev.Query(b"Q", "INSERT INTO t VALUES (1)")], 0),
    ("simple begin", [ev.Query(b"Q", "BEGIN")], 0),
    ("extended unnamed read", [parse("SELECT 1"), bind(), DESCRIBE, EXEC, SYNC, SYNC], 5),
    ("extended named read statement", [bind("sel"), EXEC, SYNC], 3),
    ("extended named write statement", [bind("ins"), EXEC, SYNC], 0),
    ("unknown statement", [bind("nope"), EXEC, SYNC], 0),
    ("named Parse must reach the authoritative store", [parse("SELECT 1", "s1"), SYNC], 0),
    ("named portal", [bind("sel", portal="p"), EXEC, SYNC], 0),
    ("unnamed statement of an earlier batch", [bind(""), EXEC, SYNC], 0),
    ("not whole yet", [parse("SELECT 1"), bind(), EXEC], 0),
    ("flush: the client waits before its Sync", [parse("SELECT 1"), bind(), EXEC, FLUSH, SYNC], 0),
    ("parse only (nothing executed)", [parse("SELECT 1"), SYNC], 0),
    ("write parsed in the batch", [parse("DELETE FROM t"), bind(), EXEC, SYNC], 0),
    ("empty", [], 0),
]


@pytest.mark.parametrize(("events", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_read_batch(events: list[Any], want: int) -> None:
    assert read_batch(deque(events), PREPARED) == want
