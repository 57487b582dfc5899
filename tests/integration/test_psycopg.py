"""psycopg 3 through the proxy: server-side binding, executemany, pipeline mode, prepare.

psycopg binds parameters server-side (Parse/Bind/Execute, text format by default),
batches executemany and pipeline mode into long runs of extended-protocol messages
with few Syncs, and prepares repeated statements under its own names.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences

pytestmark = pytest.mark.integration


def connect(proxy: ProxyProcess, db: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(db), **kw)


SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, qty int NOT NULL,
                     price numeric(10, 2), tags text[], meta jsonb);
CREATE TABLE events (id bigint PRIMARY KEY, order_id int, what text);
"""


def test_server_side_binding_autocommit_and_transactions(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both(SCHEMA)
    with connect(dual_proxy, pg_pair.old, autocommit=True) as conn:
        for i in range(50):
            conn.execute(
                "INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    i,
                    f"cust {i % 7}",
                    i % 5 + 1,
                    f"{i}.99",
                    [f"t{i}", "x"],
                    Jsonb({"i": i}),
                ),
            )
        conn.execute("UPDATE orders SET qty = qty * 2 WHERE customer = %s", ("cust 3",))
        cur = conn.execute("DELETE FROM orders WHERE id > %s AND qty < %s", (40, 4))
        assert cur.rowcount >= 1
        # Binary parameters too.
        with conn.cursor(binary=True) as bc:
            bc.execute("INSERT INTO events VALUES (%b, %b, %b)", (1, 1, "binary"))
    with connect(dual_proxy, pg_pair.old) as conn:  # non-autocommit: implicit BEGIN
        conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (2, 2, "committed"))
        conn.execute("UPDATE orders SET price = price + 1 WHERE id < %s", (10,))
        conn.commit()
        conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (3, 3, "rolled back"))
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (2, 2, "duplicate"))
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (4, 4, "in transaction()"))
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                conn.execute("ALTER TABLE events ADD CONSTRAINT pos CHECK (id > 0)")
                conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (-1, 0, "violates"))
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (5, 5, "after savepoint"))
    dual_proxy.wait_mirror_idle()
    pg_pair.assert_same("orders", order="id")
    assert pg_pair.assert_same("events", order="id")[0] == 4
    assert_no_divergences(dual_proxy)


def test_executemany_and_prepare(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(SCHEMA)
    with connect(dual_proxy, pg_pair.old) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders (id, customer, qty, price) VALUES (%s, %s, %s, %s)",
                [(i, f"c{i % 13}", i % 9 + 1, f"{i % 100}.25") for i in range(3000)],
            )
            cur.executemany(
                "UPDATE orders SET qty = qty + %s WHERE id = %s",
                [(i % 4, i) for i in range(0, 3000, 3)],
            )
        conn.commit()
    with connect(dual_proxy, pg_pair.old, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (id, order_id, what) VALUES (%s, %s, %s)",
                [(i, i % 3000, "autocommit executemany") for i in range(1000)],
            )
        for i in range(60):
            conn.execute(
                "UPDATE orders SET price = price + %s WHERE id %% 60 = %s", (1, i), prepare=True
            )
            conn.execute(
                "INSERT INTO events VALUES (%s, %s, %s)", (10_000 + i, i, "prepared"), prepare=True
            )
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1060,)
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("orders", order="id")[0] == 3000
    assert pg_pair.assert_same("events", order="id")[0] == 1060
    assert_no_divergences(dual_proxy)


def test_pipeline_mode(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(SCHEMA)
    with connect(dual_proxy, pg_pair.old, autocommit=True) as conn:
        with conn.pipeline():
            for i in range(500):
                conn.execute(
                    "INSERT INTO orders (id, customer, qty) VALUES (%s, %s, %s)", (i, f"p{i}", 1)
                )
            for i in range(0, 500, 2):
                conn.execute("UPDATE orders SET qty = qty + %s WHERE id = %s", (i, i))
            with conn.transaction():
                conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (1, 1, "txn in pipeline"))
                conn.execute("UPDATE orders SET customer = 'txn' WHERE id < %s", (5,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO events VALUES (%s, %s, %s)",
                    [(i, i, "executemany in pipeline") for i in range(100, 400)],
                )
        # A statement fails inside a pipeline transaction: the whole transaction rolls back.
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline(), conn.transaction():
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (2, 2, "rolled back"))
            conn.execute("UPDATE orders SET qty = 0")
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (1, 1, "duplicate"))
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (3, 3, "skipped"))
        # The connection is usable afterwards, still in pipeline mode.
        with conn.pipeline():
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (4, 4, "after the failure"))
            conn.execute("DELETE FROM orders WHERE id >= %s", (490,))
    with connect(dual_proxy, pg_pair.old) as conn, conn.pipeline():
        for i in range(20):
            conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (i,))
        conn.commit()
        conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (5, 5, "rolled back"))
        conn.rollback()
        conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (6, 6, "committed"))
        conn.commit()
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("orders", order="id")[0] == 490
    assert pg_pair.assert_same("events", order="id")[0] == 303
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT count(*) FROM orders WHERE qty = 0").fetchone() == (0,)
    assert_no_divergences(dual_proxy)


def test_copy_named_cursor_and_savepoints_in_a_pipeline(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both(SCHEMA)
    with connect(dual_proxy, pg_pair.old) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY orders (id, customer, qty, tags) FROM STDIN") as copy:
                for i in range(2000):
                    copy.write_row((i, f"copy {i}", i % 3 + 1, ["a", f"b{i}"]))
            with cur.copy("COPY events FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "text"])
                for i in range(1000):
                    copy.write_row((i, i, f"binary copy {i}"))
        conn.commit()
        # A server-side (named) cursor read in parts while writing in the same transaction.
        with conn.cursor(name="walk") as walk:
            walk.itersize = 100
            walk.execute("SELECT id FROM orders WHERE id % 7 = 0 ORDER BY id")
            for (oid,) in walk:
                conn.execute("UPDATE orders SET qty = qty + 10 WHERE id = %s", (oid,))
        conn.commit()
    with connect(dual_proxy, pg_pair.old, autocommit=True) as conn:
        with conn.cursor() as cur:
            with (
                pytest.raises(psycopg.errors.UniqueViolation),
                cur.copy("COPY events (id, what) FROM STDIN") as copy,
            ):
                for i in range(5000, 5100):
                    copy.write_row((i, "never committed"))
                copy.write_row((1, "duplicate"))
            with (
                pytest.raises(psycopg.errors.QueryCanceled),
                cur.copy("COPY events (id, what) FROM STDIN") as copy,
            ):
                copy.write_row((6000, "the client gives up"))
                raise psycopg.errors.QueryCanceled("client abort")
        # Savepoints inside a pipeline travel as extended-protocol statements.
        with conn.pipeline(), conn.transaction():
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (7000, 1, "outer"))
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (7001, 1, "inner"))
                conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (7000, 1, "duplicate"))
            conn.execute("INSERT INTO events VALUES (%s, %s, %s)", (7002, 1, "after"))
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("orders", order="id")[0] == 2000
    assert pg_pair.assert_same("events", order="id")[0] == 1002
    assert_no_divergences(dual_proxy)


def test_session_state_and_abandoned_transactions(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both(
        "CREATE SCHEMA app;"
        "CREATE TABLE app.stamps (id int PRIMARY KEY, at timestamptz, day date);"
        "CREATE TABLE public.stamps (id int PRIMARY KEY, at timestamptz, day date);"
    )
    options = "-c timezone=Asia/Tokyo -c datestyle=SQL,DMY"
    with connect(dual_proxy, pg_pair.old, options=options) as conn:
        conn.execute("INSERT INTO stamps VALUES (%s, '2024-01-01 10:00', '01/02/2024')", (1,))
        conn.execute("SET search_path TO app, public")
        conn.execute("INSERT INTO stamps VALUES (%s, '2024-01-01 10:00', '01/02/2024')", (2,))
        conn.commit()
        conn.execute("SET TIME ZONE 'America/Lima'")
        conn.execute("INSERT INTO stamps VALUES (%s, '2024-01-01 10:00', '03/04/2024')", (3,))
        conn.commit()
    # A client that leaves in the middle of a transaction: nothing of it is mirrored.
    conn = connect(dual_proxy, pg_pair.old)
    conn.execute("INSERT INTO public.stamps (id) VALUES (100)")
    conn.close()
    conn = connect(dual_proxy, pg_pair.old)
    conn.execute("INSERT INTO public.stamps (id) VALUES (101)")
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)  # the connection drops: no ROLLBACK, no Terminate
    conn.close()
    with connect(dual_proxy, pg_pair.old, autocommit=True) as conn:
        conn.execute("INSERT INTO public.stamps (id) VALUES (102)")
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("public.stamps", order="id")[0] == 2
    assert pg_pair.assert_same("app.stamps", order="id")[0] == 2
    assert_no_divergences(dual_proxy)
