"""write-new and new-only: an open session moves its writes to the new store in place.

One psycopg connection, opened in dual-write with a SET and a prepared
statement, lives through dual-write -> read-new -> write-new -> new-only ->
write-new -> dual-write.  A marker row planted on the new store only shows
which store answers inside a transaction (the authoritative one).  Rows
written in write-new reach the old store in lock-step; rows written in
new-only are journaled and reach the old store on the revert.  Serial keys
never collide across the move (the new store's sequences start ahead).  At
the end both stores hold the same rows, checked on the databases.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import PgPair, ProxyProcess, pg_dsn
from tests.integration.test_mode_switch_session import TOKEN, set_mode

pytestmark = pytest.mark.integration

MARKER = 1_000_000


def in_txn_marker(conn: psycopg.Connection[Any]) -> int:
    with conn.transaction():
        row = conn.execute("SELECT count(*) FROM t WHERE v = 'marker'").fetchone()
    assert row is not None
    return int(row[0])


def write(conn: psycopg.Connection[Any], tag: str, n: int = 5) -> None:
    for i in range(n):
        conn.execute("INSERT INTO t (v) VALUES (%s)", (f"{tag} {i}",), prepare=True)
    with conn.transaction():
        conn.execute("INSERT INTO t (v) VALUES (%s) RETURNING id", (f"{tag} txn",))
        conn.execute("UPDATE t SET n = n + 1 WHERE v LIKE %s", (f"{tag} %",))


def test_one_session_walks_the_ladder(pg_pair: PgPair, proxy_factory: Any) -> None:
    pg_pair.run_both(
        "CREATE SCHEMA app; CREATE TABLE app.t (id serial PRIMARY KEY, v text, n int DEFAULT 0,"
        " at timestamptz DEFAULT now())"
    )
    proxy: ProxyProcess = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="dual-write", admin_token=TOKEN
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        conn.execute("SET search_path = app, public")
        write(conn, "dual")
        with pg_pair.connect("new", autocommit=True) as c:
            c.execute(f"INSERT INTO app.t (id, v) VALUES ({MARKER}, 'marker')")
        assert in_txn_marker(conn) == 0  # old is authoritative

        for mode in ("shadow-read", "read-new", "write-new"):
            set_mode(proxy, mode)
            write(conn, mode)
        assert in_txn_marker(conn) == 1  # new is authoritative now
        status = proxy.status()
        assert status["sessions_by_store"] == {"old": 0, "new": 1}, status
        # A session opened now connects to the new store, to the database of
        # SHADOW_NEW_DSN (the client names the old store's).
        with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as fresh:
            fresh.execute("SET search_path = app, public")
            assert in_txn_marker(fresh) == 1
            row = fresh.execute("SELECT current_database()").fetchone()
            assert row == (pg_pair.new,)
            write(fresh, "fresh in write-new")

        set_mode(proxy, "new-only")
        write(conn, "new-only")
        with pg_pair.connect("old", autocommit=True) as c:
            row = c.execute("SELECT count(*) FROM app.t WHERE v LIKE 'new-only%'").fetchone()
            assert row == (0,)  # journaled for a revert, not applied

        set_mode(proxy, "write-new")  # the revert replays new-only's writes on old
        write(conn, "write-new again")
        set_mode(proxy, "dual-write")
        write(conn, "dual again")
        assert in_txn_marker(conn) == 0
    proxy.wait_mirror_idle()
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute(f"DELETE FROM app.t WHERE id = {MARKER}")
    count, _ = pg_pair.assert_same("app.t")
    assert count == 8 * 6
    assert proxy.divergences() == []
