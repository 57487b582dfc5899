"""Repair and undo across engines: MariaDB -> PostgreSQL and PostgreSQL -> MariaDB.

The same rows are written to both stores with each engine's own types (``tinyint(1)``
and ``boolean``, ``char(36)``/``binary(16)`` and ``uuid``, ``datetime``/``timestamp``
and ``timestamp``/``timestamptz``, ``json`` and ``jsonb``, ``blob`` and ``bytea``,
``time`` and ``time``, an enum on both); differences are planted on the target,
repaired, checked value by value with this file's own normalization, and undone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from comparator.diff import RowDiff
from comparator.dsn import StoreDsn
from comparator.repair import repair, undo
from tests.comparator.test_repair_stores import (  # noqa: F401  (the fixture)
    Stores,
    _pg_pool,
    query,
    run,
    run_many,
    stores_fixture,
)

pytestmark = pytest.mark.integration

MY = [
    """CREATE TABLE kinds (uid char(36), n int, flag tinyint(1), uid2 binary(16),
        at datetime(6), stamp timestamp(6) NULL, day date, clock time(6), doc json, raw blob,
        price decimal(12,4), ratio double, size enum('s','m','l'), note text,
        PRIMARY KEY (uid, n))""",
    "CREATE TABLE audit (at datetime(6), what varchar(20), flag tinyint(1))",
]
PG = [
    "CREATE TYPE size AS ENUM ('s', 'm', 'l')",
    """CREATE TABLE kinds (uid uuid, n int, flag boolean, uid2 uuid, at timestamp,
        stamp timestamptz, day date, clock time, doc jsonb, raw bytea, price numeric(12,4),
        ratio double precision, size size, note text, PRIMARY KEY (uid, n))""",
    "CREATE TABLE audit (at timestamp, what varchar(20), flag boolean)",
]
COLUMNS = "uid, n, flag, uid2, at, stamp, day, clock, doc, raw, price, ratio, size, note"
UTC = dt.UTC


def row(i: int, variant: int = 0) -> tuple[Any, ...]:
    """Row i in neutral Python values (a ``variant`` changes every non-key column)."""
    v = i + variant * 1000
    return (
        uuid.UUID(int=i * 7919),
        i % 3,
        None if i % 11 == 0 else bool(v % 2),
        uuid.UUID(int=v * 104729),
        dt.datetime(2024, 1, 1, 8, 30) + dt.timedelta(minutes=v, microseconds=v),
        None if i % 13 == 0 else dt.datetime(2024, 6, 1, tzinfo=UTC) + dt.timedelta(hours=v),
        dt.date(2023, 1, 1) + dt.timedelta(days=v),
        dt.time(v % 24, v % 60, 1, v),
        {"k": v, "nested": {"a": [1, None, "x"]}, "s": "é"},
        None if i % 5 == 0 else bytes([v % 256, 0, 255]),
        Decimal(v) / 8,
        v / 3,
        "sml"[v % 3],
        f"note {v}" if i % 4 else "",
    )


def to_engine(values: tuple[Any, ...], engine: str) -> tuple[Any, ...]:
    uid, n, flag, uid2, at, stamp, day, clock, doc, raw, price, ratio, size, note = values
    doc_text = orjson.dumps(doc).decode()
    if engine == "postgresql":
        return (uid, n, flag, uid2, at, stamp, day, clock, doc_text, raw, price, ratio, size, note)
    stamp = None if stamp is None else stamp.replace(tzinfo=None)  # the session is in UTC
    flag = None if flag is None else int(flag)
    return (
        str(uid),
        n,
        flag,
        uid2.bytes,
        at,
        stamp,
        day,
        clock,
        doc_text,
        raw,
        price,
        ratio,
        size,
        note,
    )


def insert(dsn: StoreDsn, rows: list[tuple[Any, ...]]) -> None:
    marks = ", ".join(["%s"] * 14)
    sql = f"INSERT INTO kinds ({COLUMNS}) VALUES ({marks})"
    run_many(dsn, sql, [to_engine(r, dsn.engine) for r in rows])


def canon(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """One spelling for a row read from either engine."""
    uid, n, flag, uid2, at, stamp, day, clock, doc, raw, price, ratio, size, note = values
    if isinstance(clock, dt.timedelta):
        clock = (dt.datetime.min + clock).time()
    if isinstance(stamp, dt.datetime) and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (
        uuid.UUID(str(uid)),
        n,
        None if flag is None else bool(flag),
        uid2 if isinstance(uid2, uuid.UUID) else uuid.UUID(bytes=bytes(uid2)),
        at,
        stamp,
        day,
        clock,
        doc if isinstance(doc, dict) else orjson.loads(doc),
        None if raw is None else bytes(raw),
        price,
        ratio,
        size,
        note,
    )


def kinds(dsn: StoreDsn) -> list[tuple[Any, ...]]:
    return query(dsn, f"SELECT {COLUMNS} FROM kinds ORDER BY n, uid")


def canon_sorted(dsn: StoreDsn) -> list[tuple[Any, ...]]:
    return sorted((canon(r) for r in kinds(dsn)), key=lambda r: (r[1], r[0]))


def audit(dsn: StoreDsn) -> list[tuple[Any, ...]]:
    rows = query(dsn, "SELECT at, what, flag FROM audit")
    return sorted(((a, w, None if f is None else bool(f)) for a, w, f in rows), key=repr)


@pytest.mark.parametrize(
    "auth_engine, target_engine", [("mysql", "postgresql"), ("postgresql", "mysql")]
)
async def test_repair_across_engines(
    stores: Stores, auth_engine: str, target_engine: str, tmp_path: Path
) -> None:
    auth, target = stores.new(auth_engine), stores.new(target_engine)
    run(auth, MY if auth_engine == "mysql" else PG)
    run(target, MY if target_engine == "mysql" else PG)
    rows = [row(i) for i in range(1, 41)]
    insert(auth, rows)
    gone = {1, 17, 40}  # missing on the target: first, middle, last
    changed = {2, 11, 13, 25}  # mismatched: every non-key column differs (NULLs included)
    insert(target, [r for i, r in enumerate(rows, 1) if i not in gone | changed])
    insert(target, [(*rows[i - 1][:2], *row(i, 1)[2:]) for i in changed])
    insert(target, [row(100), row(101)])  # extra on the target
    stamp = dt.datetime(2024, 3, 1, 12, 0, 0, 250000)
    for dsn in (auth, target):
        run(dsn, ["INSERT INTO audit VALUES (%s, 'login', %s)"], (stamp, True))
        run(dsn, ["INSERT INTO audit VALUES (%s, NULL, NULL)"], (stamp,))
    run(auth, ["INSERT INTO audit VALUES (%s, 'login', %s)"], (stamp, True))  # a duplicate
    run(target, ["INSERT INTO audit VALUES (%s, 'stray', %s)"], (stamp, False))

    def key(i: int, engine: str) -> tuple[Any, ...]:
        return to_engine(row(i), engine)[:2]

    schema = "public" if auth_engine == "postgresql" else auth.database
    diffs = [
        RowDiff(
            schema,
            "kinds",
            ["uid", "n"],
            missing=[key(i, auth_engine) for i in sorted(gone)],
            extra=[key(i, target_engine) for i in (100, 101)],
            mismatched=[key(i, auth_engine) for i in sorted(changed)],
        ),
        RowDiff(
            schema,
            "audit",
            [],
            missing=[query(auth, "SELECT * FROM audit WHERE what = 'login'")[0]],
            extra=[query(target, "SELECT * FROM audit WHERE what = 'stray'")[0]],
            mismatched=[],
        ),
    ]
    before_kinds, before_audit = kinds(target), query(target, "SELECT * FROM audit")
    assert canon_sorted(auth) != canon_sorted(target)

    dry = await repair(auth, target, diffs, apply=False, undo_path=tmp_path / "u")
    assert kinds(target) == before_kinds
    report = await repair(auth, target, diffs, apply=True, undo_path=tmp_path / "u", batch_size=4)
    assert report.to_json()["tables"] == dry.to_json()["tables"]
    counts = {k.rsplit(".", 1)[1]: v for k, v in report.to_json()["tables"].items()}
    assert counts["kinds"] == {"inserted": 3, "updated": 4, "deleted": 2, "unchanged": 0}
    assert counts["audit"] == {"inserted": 1, "updated": 0, "deleted": 1, "unchanged": 0}

    assert canon_sorted(target) == canon_sorted(auth)
    assert audit(target) == audit(auth)

    await undo(target, tmp_path / "u")
    assert kinds(target) == before_kinds
    assert sorted(query(target, "SELECT * FROM audit"), key=repr) == sorted(before_audit, key=repr)
