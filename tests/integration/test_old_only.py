"""Mode old-only: nothing is mirrored, the client stream is only walked (LeanFrontend).

Real clients (psql, asyncpg, pgbench in every query mode) run through a proxy in
old-only mode and must see a plain PostgreSQL: transactions, COPY both ways,
errors, prepared statements, cancellation, notifications.  Writes reach the old
database only (the new one stays empty), ``/metrics`` counts at least the read
and write statements each test sent (counted here by hand, per statement), and
records upstream latency for the old store.  The workload tests count only
statements that complete and whose kind their text and their CommandComplete
tag agree on; ``test_statements_counted_when_sent`` checks the rest (failed
statements, portals run with a row limit, cursors).  A client that breaks the
protocol after startup gets 08P01 while a healthy session keeps working.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PG_HOST, PG_USER, PgPair, ProxyProcess, pg_dsn
from tests.integration.conftest import run_psql

pytestmark = pytest.mark.integration

PROTOCOL_3 = 196608
ATTACKER = "sp-old-only-attack"


# --------------------------------------------------------------------- helpers


def old_only(pg_pair: PgPair, proxy_factory: Any) -> ProxyProcess:
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="old-only")
    assert proxy.status()["mode"] == "old-only"
    return proxy  # type: ignore[no-any-return]


def scrape(proxy: ProxyProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    code, body = proxy.http("/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def statements(snapshot: dict[Any, float], kind: str, store: str = "old") -> float:
    key = ("shadowproxy_statements_total", (("kind", kind), ("store", store)))
    return snapshot.get(key, 0.0)


def latency_count(snapshot: dict[Any, float], store: str = "old") -> float:
    return snapshot.get(("shadowproxy_upstream_latency_seconds_count", (("store", store),)), 0.0)


def assert_counted(before: dict[Any, float], after: dict[Any, float], sent: Counter[str]) -> None:
    """The proxy counted at least what the test sent, for the old store only."""
    assert sent["read"] > 0 and sent["write"] > 0
    for kind in ("read", "write"):
        delta = statements(after, kind) - statements(before, kind)
        assert delta >= sent[kind], (kind, delta, sent)
    for kind in ("read", "write", "txn", "session", "ddl"):
        assert statements(after, kind, "new") == 0.0, kind
    assert latency_count(after) > latency_count(before)
    assert latency_count(after, "new") == 0.0


def assert_new_untouched(pair: PgPair) -> None:
    with pair.connect("new") as c:
        row = c.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
        ).fetchone()
    assert row == (0,), "something reached the new database"


# ------------------------------------------------------------------------ psql

# (statement, kind counted) in the order psql sends them; COPY data follows its
# COPY.  A statement is counted only if it succeeds and its kind is the same
# whether read from its text or from the store's CommandComplete tag: a failed
# statement has no tag, and COPY ... TO STDOUT (tag COPY) or a SELECT calling a
# function with side effects (tag SELECT) are classified differently by the two.
PSQL_SCRIPT: list[tuple[str, str | None]] = [
    ("CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, bal int);", "ddl"),
    ("INSERT INTO acct VALUES (1, 'ann', 100), (2, 'bob', 50);", "write"),
    ("SELECT count(*) FROM acct;", "read"),
    ("BEGIN;", "txn"),
    ("UPDATE acct SET bal = bal - 10 WHERE id = 1;", "write"),
    ("SELECT bal FROM acct WHERE id = 1;", "read"),
    ("UPDATE acct SET bal = bal + 10 WHERE id = 2;", "write"),
    ("COMMIT;", "txn"),
    ("BEGIN;", "txn"),
    ("DELETE FROM acct;", "write"),
    ("ROLLBACK;", "txn"),
    ("BEGIN;", "txn"),
    ("INSERT INTO acct VALUES (3, 'cy', 7);", "write"),
    ("INSERT INTO acct VALUES (1, 'duplicate', 0);", None),  # error: aborts the txn
    ("SELECT 'ignored in an aborted transaction';", None),  # error
    ("ROLLBACK;", "txn"),
    ("SELECT 1/0;", None),  # error, autocommit
    ("SELECT no_such_column FROM acct;", None),  # error
    ("SELECT 'still here';", "read"),
    ("COPY acct FROM STDIN;\n10\tcopy-a\t1\n11\tcopy-b\t2\n12\tcopy-c\t3\n\\.", "write"),
    ("COPY acct FROM STDIN;\n13\tlost\t9\n10\tduplicate\t9\n\\.", None),  # error
    ("BEGIN;", "txn"),
    ("COPY acct FROM STDIN;\n20\tin-txn\t4\n\\.", "write"),
    ("UPDATE acct SET owner = upper(owner) WHERE id = 20;", "write"),
    ("COMMIT;", "txn"),
    ("COPY (SELECT id, owner, bal FROM acct ORDER BY id) TO STDOUT;", None),  # read or write
    ("\\copy acct TO STDOUT", None),
    ("SELECT 'total=' || sum(bal) || ' n=' || count(*) FROM acct;", "read"),
]


def test_psql_script(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = old_only(pg_pair, proxy_factory)
    before = scrape(proxy)
    script = "\n".join(s for s, _ in PSQL_SCRIPT) + "\n"
    out = run_psql(proxy.port, pg_pair.old, script, stop_on_error=False, extra=("-A", "-t"))
    sent = Counter(k for _, k in PSQL_SCRIPT if k is not None)

    # the errors came back as errors, and the session went on
    assert "duplicate key value violates unique constraint" in out.stderr, out.stderr
    assert "current transaction is aborted" in out.stderr, out.stderr
    assert "division by zero" in out.stderr, out.stderr
    assert 'column "no_such_column" does not exist' in out.stderr, out.stderr
    assert out.stderr.count("ERROR:") == 5, out.stderr
    # COPY out, twice (COPY ... TO STDOUT, \copy), then the final SELECT
    rows = ["1\tann\t90", "2\tbob\t60", "10\tcopy-a\t1", "11\tcopy-b\t2", "12\tcopy-c\t3"]
    rows.append("20\tIN-TXN\t4")
    lines = out.stdout.splitlines()
    assert lines[:3] == ["2", "90", "still here"], out.stdout
    assert lines[3:9] == rows, out.stdout
    assert sorted(lines[9:15]) == sorted(rows), out.stdout
    assert lines[15:] == ["total=160 n=6"], out.stdout

    with pg_pair.connect("old") as c:
        assert c.execute("SELECT array_agg(id ORDER BY id) FROM acct").fetchone() == (
            [1, 2, 10, 11, 12, 20],
        )
    assert_new_untouched(pg_pair)
    assert_counted(before, scrape(proxy), sent)
    assert proxy.divergences() == []


# ---------------------------------------------------------------------- asyncpg


async def connect(proxy: ProxyProcess, db: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=proxy.port, user=PG_USER, database=db)


async def test_asyncpg_prepared_cancel_notify(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = old_only(pg_pair, proxy_factory)
    before = scrape(proxy)
    sent: Counter[str] = Counter()
    conn = await connect(proxy, pg_pair.old)
    listener = await connect(proxy, pg_pair.old)
    try:
        await conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)")
        sent["ddl"] += 1

        ins = await conn.prepare("INSERT INTO kv (k, v) VALUES ($1, $2)")
        for i in range(60):
            await ins.fetch(i, f"value {i}")
        sent["write"] += 60
        sel = await conn.prepare("SELECT v FROM kv WHERE k = $1")
        for i in range(0, 60, 2):
            # fetch: Execute without a row limit, the statement runs to completion
            assert [tuple(r) for r in await sel.fetch(i)] == [(f"value {i}",)]
        sent["read"] += 30
        for i in range(10):
            assert await conn.execute("UPDATE kv SET v = $2 WHERE k = $1", i, f"new {i}") == (
                "UPDATE 1"
            )
        sent["write"] += 10
        await conn.executemany(
            "INSERT INTO kv (k, v) VALUES ($1, $2)", [(i, f"many {i}") for i in range(100, 120)]
        )
        sent["write"] += 20

        # a failing transaction and a rolled back one
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO kv VALUES (500, 'lost')")
                await conn.execute("INSERT INTO kv VALUES (1, 'duplicate')")
        sent["write"] += 1  # the failed INSERT is not counted
        with pytest.raises(RuntimeError, match="application"):
            async with conn.transaction():
                await conn.execute("DELETE FROM kv")
                raise RuntimeError("application error")
        sent["write"] += 1

        # COPY in and out
        assert (
            await conn.copy_records_to_table(
                "kv", records=[(i, f"copied {i}") for i in range(200, 250)], columns=["k", "v"]
            )
            == "COPY 50"
        )
        sent["write"] += 1
        buf = io.BytesIO()
        assert await conn.copy_from_table("kv", output=buf) == "COPY 130"  # not counted
        assert buf.getvalue().count(b"\n") == 130

        # cancellation: asyncpg sends a CancelRequest with the proxy's key
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0.5)
        # (canceled: not counted)
        assert await conn.fetch("SELECT 1 AS one") == [(1,)]
        sent["read"] += 1
        assert time.monotonic() - started < 4
        with pg_pair.connect("old", autocommit=True) as direct:
            running = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)'"
                " AND state = 'active'"
            ).fetchone()
        assert running == (0,)
        # a cancel inside a transaction aborts it
        tr = conn.transaction()
        await tr.start()
        await conn.execute("INSERT INTO kv VALUES (600, 'rolled back by cancel')")
        sent["write"] += 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0.3)
        await tr.rollback()

        # LISTEN / NOTIFY between two sessions through the proxy
        got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        await listener.add_listener(
            "sp_old_only", lambda _c, _pid, ch, payload: got.put_nowait((ch, payload))
        )
        await conn.execute("NOTIFY sp_old_only, 'hello'")
        sent["write"] += 1
        # a SELECT with a side effect: a write by its text, a read by its tag (not counted)
        await conn.execute("SELECT pg_notify('sp_old_only', $1)", "second")
        assert await asyncio.wait_for(got.get(), 5) == ("sp_old_only", "hello")
        assert await asyncio.wait_for(got.get(), 5) == ("sp_old_only", "second")
        assert await listener.fetch("SELECT 40 + 2 AS n") == [(42,)]
        sent["read"] += 1

        assert await conn.fetch("SELECT count(*) FROM kv") == [(130,)]
        sent["read"] += 1
    finally:
        await conn.close()
        await listener.close()

    with pg_pair.connect("old") as c:
        assert c.execute("SELECT count(*), min(k), max(k) FROM kv").fetchone() == (130, 0, 249)
        assert c.execute("SELECT v FROM kv WHERE k = 3").fetchone() == ("new 3",)
    assert_new_untouched(pg_pair)
    assert_counted(before, scrape(proxy), sent)


async def test_statements_counted_by_their_answers(pg_pair: PgPair, proxy_factory: Any) -> None:
    """Without mirroring a statement counts when the store answers it.

    asyncpg's fetchval/fetchrow run their portal with a row limit (the answer
    ends with PortalSuspended: a read), a cursor is read in parts (one
    suspended part: a read), and a failing statement ends with ErrorResponse
    (counted in shadowproxy_statement_errors_total, not by kind).
    """
    proxy = old_only(pg_pair, proxy_factory)
    with pg_pair.connect("old", autocommit=True) as c:
        c.execute("CREATE TABLE nums AS SELECT generate_series(1, 100) AS n")
        c.execute("CREATE TABLE dup (k int PRIMARY KEY)")
        c.execute("INSERT INTO dup VALUES (1)")
    before = scrape(proxy)
    conn = await connect(proxy, pg_pair.old)
    try:
        for i in range(20):
            assert await conn.fetchval("SELECT n FROM nums WHERE n = $1", i + 1) == i + 1
        assert (await conn.fetchrow("SELECT count(*) AS c FROM nums"))["c"] == 100
        async with conn.transaction():
            cur = await conn.cursor("SELECT n FROM nums ORDER BY n")
            assert [r["n"] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
        for _ in range(5):
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetch("SELECT 1/0")
        for _ in range(5):
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO dup VALUES ($1)", 1)
        await conn.execute("INSERT INTO dup VALUES ($1)", 2)
    finally:
        await conn.close()
    after = scrape(proxy)
    assert statements(after, "read") - statements(before, "read") >= 22  # 20 + 1 + 1 part
    assert statements(after, "write") - statements(before, "write") >= 1
    errors = ("shadowproxy_statement_errors_total", (("store", "old"),))
    assert after.get(errors, 0.0) - before.get(errors, 0.0) == 10


# ---------------------------------------------------------------------- pgbench

DURATION = "3"
PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")


def pgbench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def pgbench_cmd(port: int, db: str, *args: str) -> list[str]:
    return ["pgbench", "-h", PG_HOST, "-p", str(port), "-U", PG_USER, *args, db]


@pytest.mark.slow
def test_pgbench_every_query_mode(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = old_only(pg_pair, proxy_factory)
    # -i through the proxy too: DDL, COPY FROM STDIN, VACUUM, primary keys
    init = subprocess.run(
        pgbench_cmd(proxy.port, pg_pair.old, "-i", "-s", "1", "-q"),
        capture_output=True,
        text=True,
        env=pgbench_env(),
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    before = scrape(proxy)

    # all six runs at once: -S and tpcb-like, in simple, extended and prepared mode
    runs = {}
    for mode in ("simple", "extended", "prepared"):
        for script in ("select-only", "tpcb-like"):
            args = ("-n", "-b", script, "-M", mode, "-c", "2", "-j", "1", "-T", DURATION)
            runs[(mode, script)] = subprocess.Popen(
                pgbench_cmd(proxy.port, pg_pair.old, *args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=pgbench_env(),
            )
    processed: dict[tuple[str, str], int] = {}
    for key, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (key, stdout, stderr)
        assert "number of failed transactions: 0" in stdout, (key, stdout)
        found = PROCESSED.search(stdout)
        assert found is not None, stdout
        processed[key] = int(found.group(1))
        assert processed[key] > 0, (key, stdout)

    sent: Counter[str] = Counter()
    tpcb = 0
    for (_, script), n in processed.items():
        if script == "select-only":
            sent["read"] += n  # one SELECT per transaction
        else:
            # BEGIN; UPDATE accounts; SELECT abalance; UPDATE tellers; UPDATE branches;
            # INSERT INTO history; END
            sent["read"] += n
            sent["write"] += 4 * n
            sent["txn"] += 2 * n
            tpcb += n

    with pg_pair.connect("old") as c:
        row = c.execute(
            "SELECT (SELECT count(*) FROM pgbench_history),"
            " (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(delta) FROM pgbench_history)"
        ).fetchone()
    assert row is not None
    history, *sums = row
    assert tpcb <= history <= tpcb + 6, (tpcb, history)
    assert len(set(sums)) == 1, sums  # every committed transaction applied exactly once
    assert_new_untouched(pg_pair)
    after = scrape(proxy)
    assert_counted(before, after, sent)
    assert statements(after, "txn") - statements(before, "txn") >= sent["txn"]


# ------------------------------------------------------------- protocol violations


def _startup(db: str) -> bytes:
    params = {"user": PG_USER, "database": db, "application_name": ATTACKER}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", 8 + len(body), PROTOCOL_3) + body


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", 4 + len(body)) + body


def _messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if length < 4 or pos + 1 + length > len(data):
            break
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def _error_codes(data: bytes) -> list[str]:
    return [
        f[1:].decode()
        for t, body in _messages(data)
        if t == b"E"
        for f in body.split(b"\0")
        if f[:1] == b"C"
    ]


def _read_until_ready(sock: socket.socket, buf: bytes = b"") -> bytes:
    while not any(t == b"Z" for t, _ in _messages(buf)):
        chunk = sock.recv(65536)
        assert chunk, f"closed before ReadyForQuery: {buf[:300]!r}"
        buf += chunk
    return buf


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the proxy neither answered nor closed: {data[:300]!r}") from None
    except ConnectionResetError:
        pass
    return data


# (frame, codes allowed).  The type byte 0x01 must be answered with 08P01.  A
# broken length may be answered with 08P01 or the connection just closed (what
# PostgreSQL itself does when it reads one: it logs the error and hangs up).
MALFORMED: list[tuple[bytes, set[str]]] = [
    (b"\x01" + struct.pack("!i", 4), {"08P01"}),
    (b"\x01" + struct.pack("!i", 9) + b"abcde", {"08P01"}),
    (_query("SELECT 1") + b"\x01" + struct.pack("!i", 4), {"08P01"}),  # after a valid message
    (b"Q" + struct.pack("!i", 3), {"08P01", ""}),  # length below 4
    (b"d" + struct.pack("!i", 0x7FFFFFFF), {"08P01", ""}),  # over max_message_size
]


def test_malformed_message_after_startup(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = old_only(pg_pair, proxy_factory)
    with pg_pair.connect("old", autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)")
    before = scrape(proxy)
    attacks_done = threading.Event()
    healthy: dict[str, Any] = {"done": 0, "error": None}

    def healthy_session() -> None:
        try:
            with psycopg.connect(proxy.dsn(pg_pair.old), connect_timeout=10) as conn:
                i = 0
                while i < 100 or not attacks_done.is_set():
                    with conn.transaction():
                        conn.execute("INSERT INTO items VALUES (%s, %s)", (i, f"healthy {i}"))
                        assert conn.execute("SELECT count(*) FROM items").fetchone() == (i + 1,)
                    i += 1
                    healthy["done"] = i
        except BaseException as exc:
            healthy["error"] = exc

    worker = threading.Thread(target=healthy_session, daemon=True)
    worker.start()
    try:
        for bad, allowed in MALFORMED:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
                sock.sendall(_startup(pg_pair.old))
                login = _read_until_ready(sock)
                assert b"R\0\0\0\x08\0\0\0\0" in login  # AuthenticationOk
                # one healthy round trip first: the session is in its walked (lean) phase
                sock.sendall(_query("SELECT 1"))
                reply = _read_until_ready(sock)
                assert not _error_codes(reply), reply
                sock.sendall(bad)
                data = _read_to_close(sock)  # the proxy closes, on its own
                codes = _error_codes(data)
                assert ",".join(codes) in allowed, (bad, data[:300])
    finally:
        attacks_done.set()
        worker.join(30)
    assert not worker.is_alive(), "the healthy session hung"
    assert healthy["error"] is None, f"the healthy session failed: {healthy['error']!r}"
    assert healthy["done"] >= 100

    # still serving new sessions
    assert proxy.proc is not None and proxy.proc.poll() is None
    with psycopg.connect(proxy.dsn(pg_pair.old), connect_timeout=5) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (healthy["done"],)

    after = scrape(proxy)
    assert after.get(("shadowproxy_session_errors_total", ()), 0.0) == 0.0
    sent = Counter({"read": healthy["done"] + len(MALFORMED), "write": healthy["done"]})
    assert_counted(before, after, sent)

    # the broken sessions are gone from the old store too
    deadline = time.monotonic() + 5
    with pg_pair.connect("old", autocommit=True) as c:
        while True:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (ATTACKER,)
            ).fetchone()
            if row == (0,) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert row == (0,), "sessions of malformed clients were left on the old store"
    assert_new_untouched(pg_pair)
