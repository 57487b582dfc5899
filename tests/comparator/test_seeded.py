"""Seeded differences in 100 000-row tables: exactly the planted rows are reported.

Two tables per store: ``orders`` (composite key, NULLs, '' and 'NULL' strings, a wide
text column, decimals, floats, timestamps, booleans, dates) and ``accounts`` (a string
key in md5 order).  The same generator runs on both engines, then the test deletes,
inserts and updates rows of the new store at random positions, including the first
and the last key, and checks the comparator reports those keys and no others.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.comparator.conftest import Db, compare_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 100_000

PG_SCHEMA = """
CREATE TABLE orders (
    region varchar(8) NOT NULL, id integer NOT NULL, customer text, amount numeric(12,2),
    qty integer, created timestamp(6), flag boolean, note varchar(200), payload text,
    ratio double precision, day date, PRIMARY KEY (region, id));
CREATE TABLE accounts (
    code varchar(40) PRIMARY KEY, n integer NOT NULL, owner text, balance numeric(14,4),
    updated timestamptz);
"""
MY_SCHEMA = """
CREATE TABLE orders (
    region varchar(8) NOT NULL, id int NOT NULL, customer text, amount decimal(12,2),
    qty int, created datetime(6), flag tinyint(1), note varchar(200), payload text,
    ratio double, day date, PRIMARY KEY (region, id));
CREATE TABLE accounts (
    code varchar(40) PRIMARY KEY, n int NOT NULL, owner text, balance decimal(14,4),
    updated timestamp NULL);
"""


def orders_select(engine: str, lo: int, hi: int) -> str:
    if engine == "postgresql":
        return (
            "SELECT 'r' || (n % 4), n, CASE WHEN n % 11 = 0 THEN NULL ELSE 'c' || n END, "
            "(n % 1000) + 0.25, n % 17, timestamp '2024-01-01' + n * interval '1 second' "
            "+ (n % 1000) * interval '1 microsecond', n % 2 = 0, "
            "CASE n % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'NULL' ELSE md5(n::text) END, "
            "repeat(md5(n::text), 8), n / 8.0, date '2024-01-01' + (n % 365) "
            f"FROM generate_series({lo}, {hi}) n"
        )
    return (
        "SELECT concat('r', seq % 4), seq, IF(seq % 11 = 0, NULL, concat('c', seq)), "
        "(seq % 1000) + 0.25, seq % 17, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND "
        "+ INTERVAL (seq % 1000) MICROSECOND, seq % 2 = 0, "
        "CASE seq % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'NULL' ELSE md5(seq) END, "
        "repeat(md5(seq), 8), seq / 8, DATE'2024-01-01' + INTERVAL (seq % 365) DAY "
        f"FROM seq_{lo}_to_{hi}"
    )


def accounts_select(engine: str, lo: int, hi: int) -> str:
    if engine == "postgresql":
        return (
            "SELECT md5(n::text), n, CASE WHEN n % 13 = 0 THEN NULL ELSE 'owner ' || n END, "
            "n * 1.5, timestamptz '2024-01-01 00:00:00+00' + n * interval '1 minute' "
            f"FROM generate_series({lo}, {hi}) n"
        )
    return (
        "SELECT md5(seq), seq, IF(seq % 13 = 0, NULL, concat('owner ', seq)), seq * 1.5, "
        f"TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_{lo}_to_{hi}"
    )


def load(db: Db) -> None:
    schema = PG_SCHEMA if db.engine == "postgresql" else MY_SCHEMA
    db.run(
        *[s for s in schema.split(";") if s.strip()],
        f"INSERT INTO orders {orders_select(db.engine, 1, N)}",
        f"INSERT INTO accounts {accounts_select(db.engine, 1, N)}",
    )
    if db.engine == "postgresql":
        db.run("ANALYZE orders", "ANALYZE accounts")


def md5(n: int) -> str:
    return hashlib.md5(str(n).encode()).hexdigest()


def plant(new: Db, seed: int) -> dict[str, dict[str, set[tuple[object, ...]]]]:
    """Change the new store; return the expected keys per table and kind."""
    rng = random.Random(seed)
    picks = rng.sample(range(2, N), 12)
    last_order = max(n for n in range(N - 3, N + 1) if n % 4 == 3)
    orders: dict[str, set[tuple[object, ...]]] = {
        "missing": {("r0", 4)} | {(f"r{n % 4}", n) for n in picks[:3]},
        "extra": {("r0", 0), (f"r{(N + 1) % 4}", N + 1), (f"r{(N + 2) % 4}", N + 2)},
        "mismatched": {("r3", last_order)},
    }
    taken = set(picks) | {4, N}
    # note NULL -> '' on a row whose note is NULL, 'NULL' -> NULL two rows further.
    null_note = next(n for n in range(picks[10] // 5 * 5, N, 5) if not {n, n + 2} & taken)
    text_null = null_note + 2
    mismatched_orders = {picks[3]: "amount", picks[4]: "created", picks[5]: "ratio"}
    mismatched_orders |= {picks[6]: "flag", null_note: "note", text_null: "note"}
    orders["mismatched"] |= {(f"r{n % 4}", n) for n in mismatched_orders}
    codes = sorted(md5(n) for n in range(1, N + 1))
    accounts: dict[str, set[tuple[object, ...]]] = {
        "missing": {(codes[0],)} | {(md5(n),) for n in picks[7:9]},
        "extra": {(md5(N + 5),), (md5(N + 6),)},
        "mismatched": {(codes[-1],), (md5(picks[9]),)},
    }
    used = {codes[0], codes[-1]} | {md5(n) for n in picks}
    null_owner = next(n for n in range(13, N, 13) if md5(n) not in used)
    accounts["mismatched"].add((md5(null_owner),))

    my = new.engine == "mysql"
    usec = "INTERVAL 1 MICROSECOND" if my else "interval '1 microsecond'"
    stmts = [
        "DELETE FROM orders WHERE "
        + " OR ".join(f"(region = '{r}' AND id = {i})" for r, i in orders["missing"]),
        f"INSERT INTO orders {orders_select(new.engine, N + 1, N + 2)}",
        f"INSERT INTO orders {orders_select(new.engine, 0, 0) if not my else orders_select(new.engine, 0, 0).replace('seq_0_to_0', '(SELECT 0 AS seq) z')}",
        f"UPDATE orders SET customer = 'changed' WHERE region = 'r3' AND id = {last_order}",
        f"UPDATE orders SET amount = amount + 1 WHERE id = {picks[3]}",
        f"UPDATE orders SET created = created + {usec} WHERE id = {picks[4]}",
        f"UPDATE orders SET ratio = ratio * 1.000001 WHERE id = {picks[5]}",
        f"UPDATE orders SET flag = NOT flag WHERE id = {picks[6]}",
        f"UPDATE orders SET note = '' WHERE id = {null_note}",
        f"UPDATE orders SET note = NULL WHERE id = {text_null}",
        "DELETE FROM accounts WHERE code IN ("
        + ", ".join(f"'{c}'" for (c,) in accounts["missing"])
        + ")",
        f"INSERT INTO accounts {accounts_select(new.engine, N + 5, N + 6)}",
        f"UPDATE accounts SET owner = 'someone else' WHERE code = '{codes[-1]}'",
        f"UPDATE accounts SET balance = balance + 0.0001 WHERE n = {picks[9]}",
        f"UPDATE accounts SET owner = 'was null' WHERE n = {null_owner}",
    ]
    new.run(*stmts)
    return {"orders": orders, "accounts": accounts}


@pytest.mark.parametrize(
    ("old_engine", "new_engine"),
    [("postgresql", "postgresql"), ("mysql", "mysql"), ("mysql", "postgresql")],
    ids=["pg-pg", "maria-maria", "maria-pg"],
)
def test_exactly_the_planted_rows(
    make_db: Callable[[str], Db], tmp_path: Path, old_engine: str, new_engine: str
) -> None:
    old, new = make_db(old_engine), make_db(new_engine)
    load(old)
    load(new)
    identical = compare_cli(old, new, cwd=tmp_path)
    assert identical.code == 0, identical.report
    assert {t["table"]: t["rows_compared"] for t in identical.report["tables"]} == {
        "accounts": N,
        "orders": N,
    }

    expected = plant(new, seed=zlib.crc32(f"{old_engine}-{new_engine}".encode()))
    found = compare_cli(old, new, "--segment-rows", "20000", cwd=tmp_path)
    assert found.code == 1
    for table, kinds in expected.items():
        for kind, keys in kinds.items():
            assert found.keys(table, kind) == keys, (table, kind)
    orders = found.table("orders")
    assert not orders["keyless"] and orders["key"] == ["region", "id"]
    columns = {tuple(s["key"]): s["columns"] for s in orders["samples"]["mismatched"]}
    assert columns[("r3", max(n for n in range(N - 3, N + 1) if n % 4 == 3))] == ["customer"]
    assert set(map(len, columns.values())) == {1}
