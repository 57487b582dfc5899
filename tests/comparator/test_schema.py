"""Schema parity on the real servers: identical schemas, every kind of difference, and
the MariaDB -> PostgreSQL type mapping of a realistic table."""

from __future__ import annotations

import pytest

from comparator.schema import SchemaReport, compare_schema
from tests.comparator.test_repair_stores import (  # noqa: F401  (the fixture)
    Stores,
    _pg_pool,
    run,
    stores_fixture,
)

pytestmark = pytest.mark.integration

PG_SHOP = [
    "CREATE TYPE status AS ENUM ('new', 'paid', 'shipped')",
    """CREATE TABLE orders (
        id bigserial PRIMARY KEY,
        customer varchar(80) NOT NULL,
        status status NOT NULL DEFAULT 'new',
        total numeric(12,2) NOT NULL DEFAULT 0,
        paid boolean DEFAULT false,
        created timestamptz NOT NULL DEFAULT now(),
        doc jsonb,
        ref uuid UNIQUE,
        note text DEFAULT 'it''s')""",
    "CREATE INDEX orders_customer ON orders (customer, created)",
    "CREATE INDEX orders_open ON orders (status) WHERE NOT paid",
    "CREATE TABLE order_lines (order_id bigint, line int, qty int NOT NULL, PRIMARY KEY (order_id, line))",
    "CREATE TABLE audit (at timestamp, what text)",
]

MY_SHOP = [
    """CREATE TABLE orders (
        id bigint AUTO_INCREMENT PRIMARY KEY,
        customer varchar(80) NOT NULL,
        status enum('new','paid','shipped') NOT NULL DEFAULT 'new',
        total decimal(12,2) NOT NULL DEFAULT 0.00,
        paid tinyint(1) DEFAULT 0,
        created timestamp(6) NOT NULL DEFAULT current_timestamp(6),
        doc json,
        ref char(36),
        note text DEFAULT 'it''s',
        UNIQUE KEY (ref),
        KEY orders_customer (customer, created))""",
    "CREATE TABLE order_lines (order_id bigint, line int, qty int NOT NULL, PRIMARY KEY (order_id, line))",
    "CREATE TABLE audit (at datetime, what text)",
]


def _kinds(report: SchemaReport) -> set[tuple[str, str | None, str, str]]:
    return {(f.table, f.column, f.what, f.severity) for f in report.findings}


async def test_identical_postgresql(stores: Stores) -> None:
    old, new = stores.new("postgresql"), stores.new("postgresql")
    run(old, PG_SHOP)
    run(new, PG_SHOP)
    report = await compare_schema(old, new, None, None, [])
    assert report.identical, report.render()
    assert report.tables_compared == 3
    assert "identical" in report.render()
    assert report.to_json()["identical"] is True


async def test_identical_mariadb(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("mysql")
    run(old, MY_SHOP)
    run(new, MY_SHOP)
    report = await compare_schema(old, new, None, None, [])
    assert report.identical, report.render()
    assert report.tables_compared == 3


async def test_every_difference_postgresql(stores: Stores) -> None:
    old, new = stores.new("postgresql"), stores.new("postgresql")
    base = "CREATE TABLE {} (id int PRIMARY KEY, a varchar(20) NOT NULL DEFAULT 'x', b int, c text)"
    run(old, [base.format(t) for t in ("gone", "cols", "keys")])
    run(old, ["CREATE UNIQUE INDEX keys_b ON keys (b)", "CREATE INDEX keys_c ON keys (c, a)"])
    run(
        new,
        [
            # cols: b missing, a narrowed and nullable with another default, c -> integer
            "CREATE TABLE cols (id int PRIMARY KEY, a varchar(10) DEFAULT 'y', c integer, d int NOT NULL)",
            # keys: another primary key, no unique on b, the index under another name and
            # another column order, an extra index
            "CREATE TABLE keys (id int, a varchar(20) NOT NULL DEFAULT 'x', b int, c text, PRIMARY KEY (id, a))",
            "CREATE INDEX other_name ON keys (a, c)",
            "CREATE INDEX extra ON keys (b)",
            "CREATE TABLE only_new (id int)",
            "CREATE TABLE ord (id int, b int, a int)",
        ],
    )
    run(old, ["CREATE TABLE ord (id int, a int, b int)"])
    report = await compare_schema(old, new, None, None, [])
    assert _kinds(report) == {
        ("gone", None, "table", "critical"),
        ("only_new", None, "table", "low"),
        ("cols", "b", "column", "critical"),
        ("cols", "d", "column", "high"),  # NOT NULL without default on new only
        ("cols", "a", "type", "high"),
        ("cols", "a", "nullable", "medium"),
        ("cols", "a", "default", "high"),
        ("cols", "c", "type", "critical"),
        ("keys", None, "primary_key", "critical"),
        ("keys", None, "unique", "high"),
        ("keys", None, "index", "medium"),  # (c, a) missing
        ("keys", None, "index", "low"),  # (a, c) and (b) extra
        ("ord", None, "column_order", "low"),
    }
    assert not report.compatible
    by = {(f.table, f.column, f.what): f for f in report.findings}
    assert (by["cols", "a", "default"].old, by["cols", "a", "default"].new) == ("'x'", "'y'")
    assert by["keys", None, "primary_key"].new == "(id, a)"
    rendered = report.render()
    assert "critical" in rendered and "cols" in rendered and "NOT compatible" in rendered
    assert report.to_json()["counts"]["critical"] == 4


async def test_same_index_under_other_name_is_identical_mariadb(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("mysql")
    run(
        old,
        ["CREATE TABLE t (id int PRIMARY KEY, a int, b int, KEY ix1 (a, b), UNIQUE KEY u1 (b))"],
    )
    run(
        new,
        ["CREATE TABLE t (id int PRIMARY KEY, a int, b int, KEY ix2 (a, b), UNIQUE KEY u2 (b))"],
    )
    assert (await compare_schema(old, new, None, None, [])).identical


async def test_every_difference_mariadb(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("mysql")
    run(
        old,
        [
            "CREATE TABLE t (id int AUTO_INCREMENT PRIMARY KEY, a int NOT NULL, b varchar(10), e enum('a','b'))",
            "CREATE TABLE k (x int, y int, z varchar(9) DEFAULT 'on', w int, UNIQUE KEY (y), KEY (z, w),"
            " PRIMARY KEY (x))",
            "CREATE TABLE gone (id int)",
        ],
    )
    run(
        new,
        [
            "CREATE TABLE t (id bigint AUTO_INCREMENT PRIMARY KEY, a int, b varchar(5) NOT NULL, e enum('a','b','c'))",
            "CREATE TABLE k (x int, y int, z varchar(9) DEFAULT 'off', w int, UNIQUE KEY (x, y),"
            " KEY (w, z), PRIMARY KEY (x, y))",
        ],
    )
    assert _kinds(await compare_schema(old, new, None, None, [])) == {
        ("t", "id", "type", "low"),  # int -> bigint: wider
        ("t", "a", "nullable", "medium"),
        ("t", "b", "type", "high"),
        ("t", "b", "nullable", "high"),
        ("t", "e", "type", "low"),  # a label added
        ("gone", None, "table", "critical"),
        ("k", "z", "default", "high"),
        ("k", "y", "nullable", "high"),  # a primary key column is NOT NULL
        ("k", None, "primary_key", "critical"),
        ("k", None, "unique", "high"),  # (y) missing, (x, y) extra
        ("k", None, "index", "medium"),  # (z, w) missing
        ("k", None, "index", "low"),  # (w, z) extra
    }


async def test_tables_and_exclude_filters(stores: Stores) -> None:
    old, new = stores.new("postgresql"), stores.new("postgresql")
    run(old, ["CREATE TABLE a1 (id int)", "CREATE TABLE a2 (id int)", "CREATE TABLE b1 (id int)"])
    report = await compare_schema(old, new, None, ["a*"], ["a2"])
    assert _kinds(report) == {("a1", None, "table", "critical")}


async def test_mariadb_to_postgresql_mapping_is_compatible(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("postgresql")
    run(old, MY_SHOP)
    run(
        old,
        [
            """CREATE TABLE kinds (
            id int AUTO_INCREMENT PRIMARY KEY, flag tinyint(1) NOT NULL DEFAULT 1,
            big bigint, small smallint, tiny tinyint, name varchar(40), code char(3),
            body mediumtext, at datetime(3), stamp timestamp NULL, day date, clock time,
            raw blob, bin varbinary(16), doc json, uid char(36), uid2 binary(16),
            price decimal(10,4) DEFAULT 1.5, ratio double, rough float,
            size enum('s','m','l') DEFAULT 's', free varchar(30))""",
        ],
    )
    run(new, PG_SHOP)
    run(
        new,
        [
            "CREATE TYPE size AS ENUM ('s', 'm', 'l')",
            """CREATE TABLE kinds (
            id serial PRIMARY KEY, flag boolean NOT NULL DEFAULT true,
            big bigint, small smallint, tiny smallint, name varchar(40), code char(3),
            body text, at timestamp(3), stamp timestamptz, day date, clock time,
            raw bytea, bin bytea, doc jsonb, uid uuid, uid2 uuid,
            price numeric(10,4) DEFAULT 1.50, ratio double precision, rough real,
            size size DEFAULT 's', free text)""",
        ],
    )
    report = await compare_schema(old, new, "public", None, [])
    assert report.compatible, report.render()
    # Only the choices the mapping leaves open are reported, and as low: jsonb for json,
    # text for varchar(n) (the length check is lost); the enum -> PostgreSQL enum, the
    # serial, the booleans, the UUIDs and defaults map exactly.
    assert _kinds(report) == {
        ("orders", "doc", "type", "low"),
        ("kinds", "doc", "type", "low"),
        ("kinds", "free", "type", "low"),
        ("orders", None, "index", "low"),  # PostgreSQL's partial index on (status)
    }


async def test_mariadb_to_postgresql_incompatible_types(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("postgresql")
    run(
        old,
        [
            "CREATE TABLE t (id int PRIMARY KEY, a varchar(10), b datetime(6), c bigint unsigned, d tinyint(1),"
            " e timestamp NOT NULL DEFAULT current_timestamp ON UPDATE current_timestamp)"
        ],
    )
    run(
        new,
        [
            "CREATE TABLE t (id int PRIMARY KEY, a integer, b timestamp(0), c bigint, d smallint,"
            " e timestamptz NOT NULL DEFAULT now())"
        ],
    )
    assert _kinds(await compare_schema(old, new, None, None, [])) == {
        ("t", "a", "type", "critical"),
        ("t", "b", "type", "high"),  # microseconds lost
        ("t", "c", "type", "high"),  # unsigned 64-bit values above 2^63 do not fit
        ("t", "d", "type", "medium"),  # a boolean stored as an integer
        ("t", "e", "on_update", "high"),  # PostgreSQL has no ON UPDATE: updates diverge
    }


async def test_character_sets_and_collations(stores: Stores) -> None:
    old, new = stores.new("mysql"), stores.new("mysql")
    run(old, ["CREATE TABLE t (id int PRIMARY KEY, a varchar(9), b varchar(9), c varchar(9))"])
    run(
        new,
        [
            "CREATE TABLE t (id int PRIMARY KEY, a varchar(9) CHARACTER SET utf8mb3,"
            " b varchar(9) COLLATE utf8mb4_bin, c varchar(9))"
        ],
    )
    assert _kinds(await compare_schema(old, new, None, None, [])) == {
        ("t", "a", "charset", "high"),  # 4-byte characters no longer fit
        ("t", "b", "collation", "medium"),
    }
    pg_old, pg_new = stores.new("postgresql"), stores.new("postgresql")
    run(pg_old, ["CREATE TABLE t (id int PRIMARY KEY, a text)"])
    run(pg_new, ['CREATE TABLE t (id int PRIMARY KEY, a text COLLATE "C")'])
    assert _kinds(await compare_schema(pg_old, pg_new, None, None, [])) == {
        ("t", "a", "collation", "medium")
    }
