"""Value pinning: which writes are pinned, how, and the mirror statements of row images.

The catalog is written out by hand (the tables an application would have: a
serial key, a ``DEFAULT now()``, an identity column, a generated column, a
composite key, a non-public schema), and every expected SQL text is spelled
out in full.  Plans are checked against pglast's own reading of their SQL.
"""

from __future__ import annotations

from struct import unpack_from
from typing import Any

import pytest
from pglast import ast, parse_sql

from proxy.mirror.pinning import (
    MARKER,
    Catalog,
    Pinner,
    Plan,
    Shape,
    Table,
    Unpinnable,
    analyze,
    build_catalog,
    default_is_volatile,
    image_items,
)
from proxy.mirror.unit import ItemKind
from proxy.wire.pg._rows import data_row_split


def table(
    name: str,
    columns: str,
    *,
    volatile: str = "",
    key: str = "",
    generated: str = "",
    always: str = "",
    schema: str = "public",
) -> Table:
    return Table(
        schema=schema,
        name=name,
        columns=tuple(columns.split()),
        generated=frozenset(generated.split()),
        always=frozenset(always.split()),
        volatile_defaults=frozenset(volatile.split()),
        key=tuple(key.split()),
    )


ORDERS = table("orders", "id customer total created_at", volatile="id created_at", key="id")
PLAIN = table("plain", "a b")
EVENTS = table("events", "ts msg", volatile="ts")
ITEMS = table("items", "id email name g", volatile="id", key="id", generated="g", always="id")
PAIRS = table("pairs", "a b value ts", volatile="ts", key="b a")
TICKETS = table("tickets", "code seq ts note", volatile="seq ts", key="code", always="seq")
LOGS = table("logs", "id ts", volatile="id ts", key="id", schema="audit")
ODD = table('Odd"Name', 'Id a"b', volatile="Id", key="Id", schema="Sales")


def catalog(*tables: Table) -> Catalog:
    cat = Catalog()
    for t in tables:
        cat.tables[f"{t.schema}.{t.name}"] = t
        if t.schema == "public":
            cat.tables[t.name] = t
    return cat


CATALOG = catalog(ORDERS, PLAIN, EVENTS, ITEMS, PAIRS, TICKETS, LOGS, ODD)

ALL_ORDERS = "INSERT INTO orders (id, customer, total, created_at)"

# ------------------------------------------------------------------------ analyze

NOT_PINNED = [
    pytest.param(f"{ALL_ORDERS} VALUES (1, 'a', 2, '2024-01-01')", id="all-constants"),
    pytest.param(f"{ALL_ORDERS} VALUES ($1, $2, $3, $4)", id="all-parameters"),
    pytest.param(f"{ALL_ORDERS} SELECT id, 'x', 1, t FROM src", id="insert-select"),
    pytest.param("INSERT INTO plain (a) VALUES (1)", id="omitted-constant-default"),
    pytest.param("INSERT INTO plain DEFAULT VALUES", id="default-values-no-volatile"),
    pytest.param("INSERT INTO plain VALUES (DEFAULT, 1)", id="default-keyword-no-volatile"),
    pytest.param("UPDATE orders SET customer = lower(customer) WHERE id = 1", id="lower"),
    pytest.param("UPDATE orders SET total = coalesce(total, 0) + 1", id="coalesce"),
    pytest.param("UPDATE orders SET total = greatest(total, $1)", id="greatest"),
    pytest.param("UPDATE plain SET a = 1 WHERE b = 2", id="plain-update"),
    pytest.param("DELETE FROM events WHERE msg = 'x'", id="delete-keyless-no-volatile"),
    pytest.param("INSERT INTO missing (a) VALUES (1)", id="missing-table-no-volatile"),
    pytest.param("COPY orders (id, customer, total, created_at) FROM STDIN", id="copy-all"),
    pytest.param("COPY orders FROM STDIN", id="copy-no-column-list"),
    pytest.param("COPY orders (customer) TO STDOUT", id="copy-to"),
    pytest.param("COPY missing (a) FROM STDIN", id="copy-missing-table"),
    pytest.param("ALTER TABLE orders ALTER COLUMN total SET DEFAULT now()", id="set-default"),
    pytest.param("ALTER TABLE orders ADD COLUMN note text DEFAULT 'x'", id="add-column-constant"),
    pytest.param("CREATE TABLE t2 (ts timestamptz DEFAULT now())", id="create-table-default"),
    pytest.param("CREATE TABLE t2 AS SELECT 1 AS n", id="create-table-as-constant"),
    pytest.param("SELECT now()", id="select-now"),
    pytest.param("UPDATE plain SET a = 1; UPDATE plain SET b = 2", id="several-plain"),
    pytest.param("", id="empty"),
    pytest.param("-- nothing", id="comment-only"),
    pytest.param("UPDATE orders SET", id="syntax-error"),
    pytest.param(
        "MERGE INTO plain p USING src s ON p.a = s.a WHEN MATCHED THEN DELETE", id="merge"
    ),
]


@pytest.mark.parametrize("sql", NOT_PINNED)
def test_not_pinned(sql: str) -> None:
    assert analyze(sql, CATALOG) is None


UNPINNABLE = [
    pytest.param(
        "INSERT INTO events (ts, msg) VALUES (now(), 'x') ON CONFLICT DO UPDATE SET msg = 'y'",
        "ON CONFLICT DO UPDATE without a known key",
        id="upsert-no-target-keyless",
    ),
    pytest.param(
        "UPDATE orders SET id = id + 1, created_at = now()",
        "UPDATE of primary key",
        id="update-key",
    ),
    pytest.param(
        "UPDATE pairs SET (a, value) = (1, random())", "UPDATE of primary key", id="update-key-row"
    ),
    pytest.param("UPDATE events SET ts = now()", "without a primary key", id="update-keyless"),
    pytest.param(
        "DELETE FROM events WHERE ts < now()", "without a primary key", id="delete-keyless"
    ),
    pytest.param(
        "UPDATE missing SET ts = now()", "without a primary key", id="update-missing-table"
    ),
    pytest.param(
        "WITH x AS (SELECT 1) UPDATE orders SET created_at = now()",
        "WITH clause",
        id="update-with-cte",
    ),
    pytest.param(
        "WITH gone AS (DELETE FROM plain RETURNING a) DELETE FROM orders WHERE created_at < now()",
        "WITH clause",
        id="delete-writable-cte",
    ),
    pytest.param(
        "WITH x AS (SELECT 1) INSERT INTO orders (customer) VALUES ('a')",
        "WITH clause",
        id="insert-with-cte-omitted-serial",
    ),
    pytest.param(
        "INSERT INTO missing (a) VALUES (now())", "not in the mirror store's catalog", id="missing"
    ),
    pytest.param(
        "INSERT INTO logs (ts) VALUES (now())",
        "not in the mirror store's catalog",
        id="non-public-schema-unqualified",
    ),
    pytest.param(
        "COPY orders (customer, total) FROM STDIN", "COPY FROM", id="copy-omits-serial-and-now"
    ),
    pytest.param(
        "ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now()",
        "ADD COLUMN",
        id="add-column-now",
    ),
    pytest.param(
        "ALTER TABLE orders ADD COLUMN u uuid NOT NULL DEFAULT gen_random_uuid()",
        "ADD COLUMN",
        id="add-column-uuid",
    ),
    pytest.param("CREATE TABLE t2 AS SELECT now() AS t", "CREATE TABLE AS", id="ctas-now"),
    pytest.param("SELECT random() AS r INTO t3", "SELECT INTO", id="select-into-random"),
    pytest.param(
        "UPDATE plain SET a = 1; UPDATE orders SET created_at = now()",
        "several statements",
        id="several-with-volatile",
    ),
    pytest.param(
        "MERGE INTO orders o USING src s ON o.id = s.id "
        "WHEN MATCHED THEN UPDATE SET created_at = now()",
        "MERGE",
        id="merge-now",
    ),
]


@pytest.mark.parametrize(("sql", "reason"), UNPINNABLE)
def test_unpinnable(sql: str, reason: str) -> None:
    found = analyze(sql, CATALOG)
    assert isinstance(found, Unpinnable)
    assert reason in found.reason


# (sql, shape, alias in RETURNING, client_returns, client_cols, conflict)
PINNED = [
    pytest.param(
        "INSERT INTO orders (customer, total) VALUES ('a', 2)",
        Shape.INSERT,
        "orders",
        False,
        0,
        (),
        id="omitted-serial-and-now",
    ),
    pytest.param(
        "INSERT INTO items (email, name) VALUES ('a@x', 'n')",
        Shape.INSERT,
        "items",
        False,
        0,
        (),
        id="omitted-identity",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, DEFAULT)",
        Shape.INSERT,
        "orders",
        False,
        0,
        (),
        id="default-keyword-volatile",
    ),
    pytest.param(
        "INSERT INTO orders DEFAULT VALUES", Shape.INSERT, "orders", False, 0, (), id="dv"
    ),
    pytest.param(
        "INSERT INTO orders VALUES (1, 'a', 2, '2024-01-01')",
        Shape.INSERT,
        "orders",
        False,
        0,
        (),
        id="no-column-list",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, '2024-01-01'), (2, 'b', 3, now())",
        Shape.INSERT,
        "orders",
        False,
        0,
        (),
        id="multi-row-values",
    ),
    pytest.param(
        f"{ALL_ORDERS} SELECT id, 'x', random(), t FROM src",
        Shape.INSERT,
        "orders",
        False,
        0,
        (),
        id="insert-select-random",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) ON CONFLICT DO NOTHING",
        Shape.INSERT_IGNORE,
        "orders",
        False,
        0,
        (),
        id="on-conflict-do-nothing",
    ),
    pytest.param(
        "INSERT INTO pairs (a, b, value, ts) VALUES (1, 2, 3, now()) "
        "ON CONFLICT (a, b) DO UPDATE SET value = EXCLUDED.value",
        Shape.UPSERT,
        "pairs",
        False,
        0,
        ("a", "b"),
        id="upsert-target",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, '2024-01-01') "
        "ON CONFLICT (id) DO UPDATE SET created_at = now()",
        Shape.UPSERT,
        "orders",
        False,
        0,
        ("id",),
        id="upsert-now-in-update-only",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) "
        "ON CONFLICT ON CONSTRAINT orders_pkey DO UPDATE SET total = 0",
        Shape.UPSERT,
        "orders",
        False,
        0,
        ("id",),
        id="upsert-on-constraint-uses-key",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) RETURNING id, total",
        Shape.INSERT,
        "orders",
        True,
        2,
        (),
        id="client-returning",
    ),
    pytest.param(
        f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) RETURNING *",
        Shape.INSERT,
        "orders",
        True,
        -1,
        (),
        id="client-returning-star",
    ),
    pytest.param(
        "INSERT INTO orders AS x (customer) VALUES ('a') RETURNING x.id",
        Shape.INSERT,
        "x",
        True,
        1,
        (),
        id="insert-alias",
    ),
    pytest.param(
        "INSERT INTO audit.logs (id) VALUES (7)",
        Shape.INSERT,
        "logs",
        False,
        0,
        (),
        id="schema-qualified",
    ),
    pytest.param(
        "UPDATE orders SET created_at = now() WHERE id = 1",
        Shape.UPDATE,
        "orders",
        False,
        0,
        (),
        id="update-now",
    ),
    pytest.param(
        "UPDATE orders AS u SET total = random() RETURNING u.id, u.total",
        Shape.UPDATE,
        "u",
        True,
        2,
        (),
        id="update-alias",
    ),
    pytest.param(
        "UPDATE orders SET total = 0 WHERE created_at < now()",
        Shape.UPDATE,
        "orders",
        False,
        0,
        (),
        id="update-now-in-where",
    ),
    pytest.param(
        "DELETE FROM orders WHERE created_at < now() - interval '1 day'",
        Shape.DELETE,
        "orders",
        False,
        0,
        (),
        id="delete-now",
    ),
    pytest.param(
        "DELETE FROM pairs p WHERE ts < now() RETURNING *",
        Shape.DELETE,
        "p",
        True,
        -1,
        (),
        id="delete-alias-star",
    ),
]

VOLATILE_CALLS = [
    "now()",
    "CURRENT_TIMESTAMP",
    "CURRENT_DATE",
    "LOCALTIMESTAMP",
    "clock_timestamp()",
    "statement_timestamp()",
    "transaction_timestamp()",
    "random()",
    "gen_random_uuid()",
    "nextval('s')",
    "pg_catalog.now()",
    "lower(random()::text)",  # a deterministic call around a volatile one
    "(SELECT max(ts) FROM events WHERE ts < now())",
    "current_user",
]


def check_plan(sql: str, plan: Plan, alias: str, spelled: str = "") -> None:
    """The plan's SQL is the client's statement with only its RETURNING extended:
    the marker, then every column of the table by name, in catalog order."""
    table = CATALOG.find(plan.schema, plan.table)
    assert table is not None
    mine: Any = parse_sql(plan.sql)[0].stmt
    theirs: Any = parse_sql(sql)[0].stmt
    exprs = mine.returningClause.exprs
    width = len(table.columns)
    marker, image = exprs[-width - 1], exprs[-width:]
    assert marker == ast.ResTarget(name=MARKER, val=ast.A_Const(isnull=True))
    assert [e.val for e in image] == [
        ast.ColumnRef(fields=(ast.String(sval=alias), ast.String(sval=c))) for c in table.columns
    ]
    client = theirs.returningClause.exprs if theirs.returningClause else ()
    assert tuple(exprs[: -width - 1]) == tuple(client)
    mine.returningClause = theirs.returningClause = None
    assert mine == theirs


@pytest.mark.parametrize(
    ("sql", "shape", "alias", "client_returns", "client_cols", "conflict"), PINNED
)
def test_pinned(
    sql: str,
    shape: Shape,
    alias: str,
    client_returns: bool,
    client_cols: int,
    conflict: tuple[str, ...],
) -> None:
    plan = analyze(sql, CATALOG)
    assert isinstance(plan, Plan)
    assert (plan.shape, plan.client_returns, plan.client_cols, plan.conflict) == (
        shape,
        client_returns,
        client_cols,
        conflict,
    )
    target = CATALOG.find(plan.schema, plan.table)
    assert target is not None and plan.width == len(target.columns)
    check_plan(sql, plan, alias)


@pytest.mark.parametrize("call", VOLATILE_CALLS)
def test_volatile_calls_pin_an_update(call: str) -> None:
    sql = f"UPDATE orders SET customer = {call} WHERE id = 1"
    plan = analyze(sql, CATALOG)
    assert isinstance(plan, Plan) and plan.shape is Shape.UPDATE
    check_plan(sql, plan, "orders")


@pytest.mark.parametrize("call", VOLATILE_CALLS)
def test_volatile_calls_pin_an_insert_of_all_columns(call: str) -> None:
    sql = f"{ALL_ORDERS} VALUES (1, 'a', 2, {call})"
    plan = analyze(sql, CATALOG)
    assert isinstance(plan, Plan) and plan.shape is Shape.INSERT
    check_plan(sql, plan, "orders")


def test_schema_qualified_plan_names_its_schema() -> None:
    plan = analyze("INSERT INTO audit.logs (id) VALUES (7)", CATALOG)
    assert isinstance(plan, Plan)
    assert (plan.schema, plan.table, plan.width) == ("audit", "logs", 2)
    cols = ", ".join(f"logs.{c}" for c in CATALOG.tables["audit.logs"].columns)
    assert plan.sql == f"INSERT INTO audit.logs (id) VALUES (7) RETURNING NULL AS {MARKER}, {cols}"


def test_quoted_identifiers_are_kept() -> None:
    plan = analyze('INSERT INTO "Sales"."Odd""Name" ("a""b") VALUES (1)', CATALOG)
    assert isinstance(plan, Plan)
    assert (plan.schema, plan.table) == ("Sales", 'Odd"Name')
    check_plan(
        'INSERT INTO "Sales"."Odd""Name" ("a""b") VALUES (1)', plan, 'Odd"Name', '"Odd""Name"'
    )


@pytest.mark.parametrize(
    ("sql", "ncols", "keep"),
    [
        (f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) RETURNING *", 4 + 1 + 4, 4),
        (f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) RETURNING id, *", 5 + 1 + 4, 5),
        (f"{ALL_ORDERS} VALUES (1, 'a', 2, now()) RETURNING id", 1 + 1 + 4, 1),
        (f"{ALL_ORDERS} VALUES (1, 'a', 2, now())", 0 + 1 + 4, 0),
    ],
)
def test_keep_finds_the_marker(sql: str, ncols: int, keep: int) -> None:
    plan = analyze(sql, CATALOG)
    assert isinstance(plan, Plan)
    assert plan.keep(ncols) == keep
    # The returned row cut there: the client's columns, then the table's row.
    client = [b"c%d" % i for i in range(keep)]
    image = [b"1", b"a", None, b"2024-01-01 00:00:00+00"]
    row = b"".join(len(v).to_bytes(4, "big") + v for v in client)
    row += b"\xff\xff\xff\xff" + b"\x00\x00\x00\x011\x00\x00\x00\x01a\xff\xff\xff\xff"
    row += b"\x00\x00\x00\x16" + b"2024-01-01 00:00:00+00"
    _, values = data_row_split(ncols.to_bytes(2, "big") + row, plan.keep(ncols))
    assert values == image


# ------------------------------------------------ generated values in odd places


def test_volatile_in_insert_cte_is_not_mirrored_as_is() -> None:
    sql = f"WITH x AS (SELECT now() AS t) {ALL_ORDERS} SELECT 1, 'a', 2, t FROM x"
    assert analyze(sql, CATALOG) is not None


def test_writable_cte_under_insert_is_unpinnable() -> None:
    sql = (
        "WITH x AS (UPDATE orders SET created_at = now() RETURNING id) "
        "INSERT INTO plain (a, b) SELECT id, 1 FROM x"
    )
    assert isinstance(analyze(sql, CATALOG), Unpinnable)


def test_upsert_with_now_on_missing_table_is_unpinnable() -> None:
    sql = "INSERT INTO missing (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = now()"
    assert isinstance(analyze(sql, CATALOG), Unpinnable)


@pytest.mark.parametrize(
    "column", ["n bigserial", "n int GENERATED ALWAYS AS IDENTITY", "n serial4 NOT NULL"]
)
def test_add_serial_column_is_unpinnable(column: str) -> None:
    assert isinstance(analyze(f"ALTER TABLE orders ADD COLUMN {column}", CATALOG), Unpinnable)


def test_now_literal_cast_is_pinned() -> None:
    assert isinstance(analyze("UPDATE orders SET created_at = 'now'::timestamptz", CATALOG), Plan)


# ------------------------------------------------------------------- image_items


def decode_bind(body: bytes) -> tuple[list[int], list[bytes | None], list[int]]:
    """A Bind body after the names -> (parameter formats, values, result formats)."""
    (nfmt,) = unpack_from("!H", body, 0)
    fmts = list(unpack_from(f"!{nfmt}h", body, 2))
    pos = 2 + 2 * nfmt
    (nparams,) = unpack_from("!H", body, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(nparams):
        (length,) = unpack_from("!i", body, pos)
        pos += 4
        values.append(None if length < 0 else body[pos : pos + length])
        pos += max(length, 0)
    (nres,) = unpack_from("!H", body, pos)
    res = list(unpack_from(f"!{nres}h", body, pos + 2))
    assert pos + 2 + 2 * nres == len(body)
    return fmts, values, res


def decode_parse(body: bytes) -> tuple[str, int]:
    nul = body.index(b"\0")
    (n,) = unpack_from("!H", body, nul + 1)
    assert body[nul + 3 :] == b"\0" * (4 * n)
    return body[:nul].decode(), n


def plan_of(sql: str) -> Plan:
    plan = analyze(sql, CATALOG)
    assert isinstance(plan, Plan)
    return plan


def images(plan: Plan, rows: list[list[bytes | None]], fmt: int = 0) -> list[tuple[Any, ...]]:
    """(sql, tags, bind values) of each item, after checking its bodies agree with its SQL."""
    target = CATALOG.find(plan.schema, plan.table)
    assert target is not None
    out = []
    for item in image_items(plan, target, rows, fmt):
        assert item.kind is ItemKind.EXECUTE
        parse_sql(item.sql)  # valid PostgreSQL
        text, nparams = decode_parse(item.parse_body)
        fmts, values, res = decode_bind(item.bind_body)
        assert (text, fmts, res, nparams) == (item.sql, [fmt], [], len(values))
        out.append((item.sql, item.tags, values))
    return out


ITEM_ROW: list[bytes | None] = [b"1", b"a@x", None, b"A@X"]
ORDER_ROW: list[bytes | None] = [b"7", b"ann", b"2.50", b"2024-01-01 00:00:00+00"]
ORDER_COLS = '("id", "customer", "total", "created_at")'


def test_insert_skips_generated_columns() -> None:
    plan = plan_of("INSERT INTO items (email) VALUES ('a@x')")
    assert images(plan, [ITEM_ROW, [b"2", b"b@x", b"", b"B@X"]]) == [
        (
            'INSERT INTO "items" ("id", "email", "name") OVERRIDING SYSTEM VALUE '
            "VALUES ($1, $2, $3), ($4, $5, $6)",
            ["INSERT 0 2"],
            [b"1", b"a@x", None, b"2", b"b@x", b""],
        )
    ]


def test_insert_schema_qualified_binary() -> None:
    plan = plan_of("INSERT INTO audit.logs (id) VALUES (7)")
    row: list[bytes | None] = [b"\x00\x00\x00\x07", b"\x00" * 8]
    assert images(plan, [row], fmt=1) == [
        (
            'INSERT INTO "audit"."logs" ("id", "ts") OVERRIDING SYSTEM VALUE VALUES ($1, $2)',
            ["INSERT 0 1"],
            row,
        )
    ]


def test_upsert_updates_the_non_conflict_columns() -> None:
    plan = plan_of(
        f"{ALL_ORDERS} VALUES (7, 'ann', 2.5, now()) ON CONFLICT (id) DO UPDATE SET total = 0"
    )
    assert images(plan, [ORDER_ROW]) == [
        (
            f'INSERT INTO "orders" {ORDER_COLS} OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4) '
            'ON CONFLICT ("id") DO UPDATE SET "customer" = EXCLUDED."customer", '
            '"total" = EXCLUDED."total", "created_at" = EXCLUDED."created_at"',
            ["INSERT 0 1"],
            ORDER_ROW,
        )
    ]


def test_upsert_of_key_columns_only_does_nothing() -> None:
    plan = Plan(Shape.UPSERT, "", None, "pairs", False, 0, 4, ("a", "b", "value", "ts"))
    [(sql, tags, _)] = images(plan, [[b"1", b"2", b"3", b"4"]])
    assert sql.endswith(' ON CONFLICT ("a", "b", "value", "ts") DO NOTHING')
    assert tags == ["INSERT 0 1"]


def test_upsert_does_not_assign_an_always_identity_column() -> None:
    plan = plan_of(
        "INSERT INTO items (email, name) VALUES ('a@x', 'n') "
        "ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name"
    )
    [(sql, _, _)] = images(plan, [ITEM_ROW])
    assert '"id" = EXCLUDED."id"' not in sql


def test_insert_ignore() -> None:
    plan = plan_of(f"{ALL_ORDERS} VALUES (7, 'ann', 2.5, now()) ON CONFLICT DO NOTHING")
    assert images(plan, [ORDER_ROW]) == [
        (
            f'INSERT INTO "orders" {ORDER_COLS} OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4) '
            "ON CONFLICT DO NOTHING",
            ["INSERT 0 1"],
            ORDER_ROW,
        )
    ]


def test_update_by_key_skips_key_always_and_generated() -> None:
    plan = plan_of("UPDATE tickets SET ts = now() WHERE note = 'x'")
    rows: list[list[bytes | None]] = [[b"T1", b"5", b"ts1", None], [b"T2", b"6", b"ts2", b"n"]]
    sql = 'UPDATE "tickets" SET "ts" = $2, "note" = $3 WHERE "code" = $1'
    assert images(plan, rows) == [
        (sql, ["UPDATE 1"], [b"T1", b"ts1", None]),
        (sql, ["UPDATE 1"], [b"T2", b"ts2", b"n"]),
    ]
    plan = plan_of("UPDATE items SET name = random()::text")
    assert images(plan, [ITEM_ROW]) == [
        ('UPDATE "items" SET "email" = $2, "name" = $3 WHERE "id" = $1', ["UPDATE 1"], ITEM_ROW[:3])
    ]


def test_update_by_composite_key_in_key_order() -> None:
    plan = plan_of("UPDATE pairs SET value = random()")
    assert images(plan, [[b"1", b"2", b"0.5", b"ts"]]) == [
        (
            'UPDATE "pairs" SET "value" = $3, "ts" = $4 WHERE "b" = $1 AND "a" = $2',
            ["UPDATE 1"],
            [b"2", b"1", b"0.5", b"ts"],
        )
    ]


def test_delete_by_key() -> None:
    plan = plan_of("DELETE FROM pairs WHERE ts < now()")
    rows: list[list[bytes | None]] = [[b"1", b"2", b"v", b"t"], [b"3", b"4", None, None]]
    sql = 'DELETE FROM "pairs" WHERE "b" = $1 AND "a" = $2'
    assert images(plan, rows) == [
        (sql, ["DELETE 1"], [b"2", b"1"]),
        (sql, ["DELETE 1"], [b"4", b"3"]),
    ]


def test_quoted_identifiers() -> None:
    plan = plan_of('INSERT INTO "Sales"."Odd""Name" ("a""b") VALUES (now())')
    assert images(plan, [[b"1", b"x"]]) == [
        (
            'INSERT INTO "Sales"."Odd""Name" ("Id", "a""b") OVERRIDING SYSTEM VALUE '
            "VALUES ($1, $2)",
            ["INSERT 0 1"],
            [b"1", b"x"],
        )
    ]
    plan = plan_of('DELETE FROM "Sales"."Odd""Name" WHERE "a""b" < now()::text')
    assert images(plan, [[b"1", b"x"]]) == [
        ('DELETE FROM "Sales"."Odd""Name" WHERE "Id" = $1', ["DELETE 1"], [b"1"])
    ]


def test_chunks_stay_under_the_parameter_limit() -> None:
    three = table("three", "a b c", volatile="a", key="a")
    plan = Plan(Shape.INSERT, "", None, "three", False, 0, 3)
    rows: list[list[bytes | None]] = [
        [str(i).encode(), None if i % 7 == 0 else b"x", b""] for i in range(30_000)
    ]
    items = image_items(plan, three, rows, 0)
    assert [it.tags for it in items] == [["INSERT 0 21845"], ["INSERT 0 8155"]]
    nparams = [decode_parse(it.parse_body)[1] for it in items]
    assert nparams == [65535, 8155 * 3]
    assert items[0].sql.endswith("($65533, $65534, $65535)")
    assert items[1].sql.endswith("($24463, $24464, $24465)")
    decoded = [v for it in items for v in decode_bind(it.bind_body)[1]]
    assert decoded == [v for row in rows for v in row]


def test_statements_follow_the_row_count_and_the_table_as_it_is_now() -> None:
    """The statement texts are reused per shape: a unit with another number of
    rows, or the table after an ALTER (a new Table from the catalog), gets its own."""
    before = table("t", "id v", volatile="id", key="id")
    after = table("t", "id v w", volatile="id", key="id")  # ALTER TABLE t ADD w
    plan = Plan(Shape.INSERT, "", None, "t", False, 0, 2)
    head = 'INSERT INTO "t" ("id", "v") OVERRIDING SYSTEM VALUE VALUES '
    one: list[list[bytes | None]] = [[b"1", b"a"]]
    two: list[list[bytes | None]] = [[b"2", b"b"], [b"3", b"c"]]
    for _ in range(2):
        assert [it.sql for it in image_items(plan, before, one, 0)] == [head + "($1, $2)"]
        assert [it.sql for it in image_items(plan, before, two, 0)] == [head + "($1, $2), ($3, $4)"]
    [item] = image_items(plan, after, [[b"4", b"d", b"e"]], 0)
    assert (
        item.sql == 'INSERT INTO "t" ("id", "v", "w") OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)'
    )
    assert decode_parse(item.parse_body) == (item.sql, 3)
    assert decode_bind(item.bind_body)[1] == [b"4", b"d", b"e"]
    update = Plan(Shape.UPDATE, "", None, "t", False, 0, 2)
    assert [it.sql for it in image_items(update, before, two, 0)] == [
        'UPDATE "t" SET "v" = $2 WHERE "id" = $1'
    ] * 2
    [item] = image_items(update, after, [[b"4", b"d", b"e"]], 0)
    assert item.sql == 'UPDATE "t" SET "v" = $2, "w" = $3 WHERE "id" = $1'
    assert decode_bind(item.bind_body)[1] == [b"4", b"d", b"e"]


def test_no_rows_no_items() -> None:
    plan = plan_of("INSERT INTO orders (customer) VALUES ('a')")
    assert image_items(plan, ORDERS, [], 0) == []
    plan = plan_of("DELETE FROM orders WHERE created_at < now()")
    assert image_items(plan, ORDERS, [], 0) == []


# ------------------------------------------------------------------ build_catalog


def catalog_row(
    schema: str,
    name: str,
    column: str,
    *,
    generated: bool = False,
    identity: bool = False,
    always: bool = False,
    default: str | None = None,
    key_pos: int | None = None,
) -> tuple[Any, ...]:
    """One row of CATALOG_SQL, in its column order."""
    return (
        schema,
        name,
        column,
        generated,
        identity,
        always,
        default,
        key_pos is not None,
        key_pos,
    )


CATALOG_ROWS = [
    catalog_row("app", "logs", "id", identity=True, key_pos=1),
    catalog_row("app", "logs", "at", default="now()"),
    catalog_row("app", "only_here", "x", default="0"),
    catalog_row("public", "logs", "id", default="nextval('logs_id_seq'::regclass)", key_pos=1),
    catalog_row("public", "orders", "id", default="nextval('orders_id_seq'::regclass)", key_pos=1),
    catalog_row("public", "orders", "status", default="'new'::text"),
    catalog_row("public", "orders", "total", default="0"),
    catalog_row("public", "orders", "created_at", default="CURRENT_TIMESTAMP"),
    catalog_row("public", "pairs", "a", key_pos=2),
    catalog_row("public", "pairs", "b", key_pos=1),
    catalog_row("public", "pairs", "c", key_pos=3),
    catalog_row("public", "pairs", "v"),
    catalog_row("public", "things", "id", identity=True, always=True, key_pos=1),
    catalog_row("public", "things", "email"),
    catalog_row("public", "things", "lower_email", generated=True, default="lower(email)"),
    catalog_row("public", "things", "token", default="gen_random_uuid()"),
    catalog_row("zeta", "logs", "n"),
]


def test_build_catalog_tables() -> None:
    cat = build_catalog(CATALOG_ROWS)
    assert cat.find("public", "orders") == Table(
        schema="public",
        name="orders",
        columns=("id", "status", "total", "created_at"),
        generated=frozenset(),
        always=frozenset(),
        volatile_defaults=frozenset({"id", "created_at"}),
        key=("id",),
    )
    assert cat.find(None, "things") == Table(
        schema="public",
        name="things",
        columns=("id", "email", "lower_email", "token"),
        generated=frozenset({"lower_email"}),
        always=frozenset({"id"}),
        volatile_defaults=frozenset({"id", "token"}),
        key=("id",),
    )
    pairs = cat.find(None, "pairs")
    assert pairs is not None
    assert (pairs.key, pairs.volatile_defaults) == (("b", "a", "c"), frozenset())


def test_build_catalog_schemas() -> None:
    cat = build_catalog(CATALOG_ROWS)
    app_logs = cat.find("app", "logs")
    assert app_logs is not None
    assert (app_logs.columns, app_logs.volatile_defaults, app_logs.always) == (
        ("id", "at"),
        frozenset({"id", "at"}),
        frozenset(),  # GENERATED BY DEFAULT AS IDENTITY
    )
    # Unqualified names resolve to public first, whatever the schema order.
    public_logs = cat.find(None, "logs")
    assert public_logs is not None and public_logs.schema == "public"
    zeta = cat.find("zeta", "logs")
    assert zeta is not None and zeta.key == () and zeta.columns == ("n",)
    # A table found in no public schema is still found by its bare name.
    only = cat.find(None, "only_here")
    assert only is not None and only.schema == "app" and only.volatile_defaults == frozenset()
    assert cat.find("public", "only_here") is None
    assert cat.find("app", "orders") is None
    assert build_catalog([]).tables == {}


def test_built_catalog_drives_analyze() -> None:
    cat = build_catalog(CATALOG_ROWS)
    assert (
        analyze("INSERT INTO orders (id, status, total, created_at) VALUES (1, 'a', 2, 3)", cat)
        is None
    )
    plan = analyze("INSERT INTO orders (status) VALUES ('a')", cat)
    assert isinstance(plan, Plan) and plan.width == 4
    plan = analyze("INSERT INTO app.logs (id) VALUES (1)", cat)
    assert isinstance(plan, Plan) and (plan.schema, plan.width) == ("app", 2)


# ------------------------------------------------------------ default_is_volatile

DEFAULTS = [
    ("nextval('t_id_seq'::regclass)", True),
    ("now()", True),
    ("CURRENT_TIMESTAMP", True),
    ("CURRENT_DATE", True),
    ("LOCALTIMESTAMP(3)", True),
    ("gen_random_uuid()", True),
    ("uuid_generate_v4()", True),
    ("(now() + '1 day'::interval)", True),
    ("(random() * (100)::double precision)", True),
    ("clock_timestamp()", True),
    ("CURRENT_USER", True),
    ("0", False),
    ("'new'::text", False),
    ("'{}'::jsonb", False),
    ("false", False),
    ("NULL::integer", False),
    ("'2024-01-01 00:00:00'::timestamp without time zone", False),
    ("lower('ABC'::text)", False),
    ("ARRAY[]::integer[]", False),
    ("((1 + 2) * 3)", False),
    ("this is not an expression (", True),  # unreadable: assumed volatile
]


@pytest.mark.parametrize(("expr", "volatile"), DEFAULTS)
def test_default_is_volatile(expr: str, volatile: bool) -> None:
    assert default_is_volatile(expr) is volatile


# ------------------------------------------------------------------------- Pinner


def test_pinner_caches_per_text_and_catalog() -> None:
    pinner = Pinner()
    sql = "INSERT INTO orders (customer) VALUES ('a')"
    assert pinner.plan(sql) is None  # empty catalog: nothing is known to need pinning
    assert pinner.version == 0
    pinner.set_catalog(CATALOG)
    assert pinner.version == 1
    first = pinner.plan(sql)
    assert isinstance(first, Plan)
    assert pinner.plan(sql) is first
    assert pinner.table(first) is ORDERS
    pinner.set_catalog(catalog(PLAIN))
    assert pinner.version == 2
    assert pinner.plan(sql) is None


def test_pinner_cache_is_bounded() -> None:
    pinner = Pinner()
    pinner.set_catalog(CATALOG)
    pinner._MAX_PLANS = 3  # type: ignore[misc]
    for i in range(10):
        pinner.plan(f"UPDATE orders SET total = {i} WHERE created_at < now()")
        assert len(pinner._plans) <= 3
    assert isinstance(pinner.plan("UPDATE orders SET total = 9 WHERE created_at < now()"), Plan)
