"""psql through the proxy: transactions, savepoints, errors, COPY, \\gset, DDL.

Each test runs a psql script against the proxy (dual-write), waits until the
mirror has drained, then compares the two stores directly and expects a clean
divergence log.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PG_HOST, PG_PORT, PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences, run_psql

pytestmark = pytest.mark.integration


def test_transactions_savepoints_multistatement_gset(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both("CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, bal int)")
    script = r"""
INSERT INTO acct VALUES (1, 'ann', 100), (2, 'bob', 50);
BEGIN;
UPDATE acct SET bal = bal - 10 WHERE id = 1;
UPDATE acct SET bal = bal + 10 WHERE id = 2;
COMMIT;
BEGIN;
DELETE FROM acct;
ROLLBACK;
BEGIN;
INSERT INTO acct VALUES (3, 'cy', 7);
SAVEPOINT a;
INSERT INTO acct VALUES (4, 'dee', 8);
UPDATE acct SET bal = bal * 100 WHERE id = 1;
ROLLBACK TO SAVEPOINT a;
INSERT INTO acct VALUES (5, 'eve', 9);
SAVEPOINT b;
UPDATE acct SET bal = bal + 1 WHERE id = 5;
RELEASE SAVEPOINT b;
COMMIT;
INSERT INTO acct VALUES (6, 'fay', 1); UPDATE acct SET bal = bal + 5 WHERE id = 6; DELETE FROM acct WHERE id = 2;
BEGIN; INSERT INTO acct VALUES (7, 'gil', 2); COMMIT; INSERT INTO acct VALUES (8, 'hal', 3);
INSERT INTO acct VALUES (9, 'ida', 4) \; UPDATE acct SET bal = bal + 1 WHERE id >= 8 \; DELETE FROM acct WHERE id = 3;
BEGIN \; INSERT INTO acct VALUES (10, 'jo', 5) \; UPDATE acct SET owner = upper(owner) WHERE id = 10 \; COMMIT;
BEGIN \; INSERT INTO acct VALUES (11, 'never', 0) \; ROLLBACK;
SELECT max(bal) AS top, count(*) AS n FROM acct \gset
INSERT INTO acct VALUES (:n + 100, 'gset', :top);
\echo top=:top n=:n
"""
    out = run_psql(dual_proxy.port, pg_pair.old, script)
    assert "top=90 n=7" in out.stdout, out.stdout
    dual_proxy.wait_mirror_idle()
    count, _ = pg_pair.assert_same("acct", order="id")
    assert count == 8
    assert_no_divergences(dual_proxy)


def test_error_inside_transaction_then_rollback(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    script = r"""
INSERT INTO t VALUES (1, 'kept');
BEGIN;
INSERT INTO t VALUES (2, 'lost');
INSERT INTO t VALUES (1, 'duplicate');
INSERT INTO t VALUES (3, 'ignored: transaction is aborted');
ROLLBACK;
BEGIN;
INSERT INTO t VALUES (4, 'rolled back');
SELECT 1/0;
ROLLBACK;
INSERT INTO t VALUES (5, 'after');
SELECT no_such_column FROM t;
INSERT INTO t VALUES (6, 'after an autocommit error');
BEGIN;
INSERT INTO t VALUES (7, 'multi') \; INSERT INTO t VALUES (8, 'statement');
INSERT INTO t VALUES (1, 'duplicate');
COMMIT;
INSERT INTO t VALUES (9, 'implicit') \; INSERT INTO t VALUES (1, 'duplicate') \; INSERT INTO t VALUES (10, 'block');
\copy t FROM stdin
11	copied
12	copied
1	duplicate
\.
BEGIN;
INSERT INTO t VALUES (13, 'copy in a transaction');
\copy t FROM stdin
14	bad row
not-a-number	x
\.
COMMIT;
"""
    out = run_psql(dual_proxy.port, pg_pair.old, script, stop_on_error=False)
    assert "duplicate key value violates unique constraint" in out.stderr
    assert "current transaction is aborted" in out.stderr
    assert "division by zero" in out.stderr
    assert "invalid input syntax for type integer" in out.stderr
    dual_proxy.wait_mirror_idle()
    count, _ = pg_pair.assert_same("t", order="id")
    assert count == 3
    with pg_pair.connect("new") as c:
        # The COMMIT of the aborted transaction was answered ROLLBACK: 7 and 8 are gone.
        assert c.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 5, 6],)
    assert_no_divergences(dual_proxy)


def test_copy_in_and_out(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(
        "CREATE TABLE c (id int PRIMARY KEY, name text, amount numeric(12,2), note text)"
    )
    null, tab = "\\N", "\\t"  # COPY text format escapes, as psql sends them
    rows = "\n".join(
        f"{i}\tname {i} é\t{i * 1.25:.2f}\t{null if i % 7 == 0 else f'note{tab}{i}'}"
        for i in range(1, 3001)
    )
    script = (
        f"\\copy c FROM stdin\n{rows}\n\\.\nUPDATE c SET amount = amount + 1 WHERE id % 10 = 0;\n"
    )
    run_psql(dual_proxy.port, pg_pair.old, script)
    # A second COPY inside an explicit transaction, with CSV options.
    csv_rows = "\n".join(f'{i},"csv, {i}",{i}.50,' for i in range(5001, 5501))
    script = (
        "BEGIN;\n"
        f"\\copy c FROM stdin WITH (FORMAT csv)\n{csv_rows}\n\\.\n"
        "DELETE FROM c WHERE id BETWEEN 5001 AND 5010;\n"
        "COMMIT;\n"
    )
    run_psql(dual_proxy.port, pg_pair.old, script)
    dual_proxy.wait_mirror_idle()
    count, _ = pg_pair.assert_same("c", order="id")
    assert count == 3490

    # COPY out through the proxy equals COPY out straight from the old store.
    out_script = (
        "\\copy c TO stdout\nCOPY (SELECT * FROM c ORDER BY id) TO STDOUT WITH (FORMAT csv);\n"
    )
    via_proxy = run_psql(dual_proxy.port, pg_pair.old, out_script).stdout
    direct = run_psql(PG_PORT, pg_pair.old, out_script).stdout
    assert via_proxy == direct
    assert len(via_proxy.splitlines()) == 2 * 3490
    assert_no_divergences(dual_proxy)


def test_search_path_temp_table_ddl_truncate(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    pg_pair.run_both(
        "CREATE SCHEMA app;"
        "CREATE TABLE public.items (id int PRIMARY KEY, v text);"
        "CREATE TABLE app.items (id int PRIMARY KEY, v text);"
        "CREATE TABLE public.junk (id int);"
        "INSERT INTO public.junk SELECT generate_series(1, 50);"
    )
    script = """
INSERT INTO items VALUES (1, 'public');
SET search_path TO app, public;
INSERT INTO items VALUES (1, 'app'), (2, 'app');
UPDATE items SET v = v || '!' WHERE id = 2;
CREATE TEMP TABLE staging (id int, v text);
INSERT INTO staging SELECT g, 'staged ' || g FROM generate_series(10, 40) g;
INSERT INTO items SELECT id, v FROM staging WHERE id % 2 = 0;
DROP TABLE staging;
CREATE TABLE audit (id serial PRIMARY KEY, what text NOT NULL);
CREATE INDEX audit_what ON audit (what);
INSERT INTO audit (id, what) VALUES (1, 'created');
ALTER TABLE audit ADD COLUMN extra int DEFAULT 42;
INSERT INTO audit (id, what, extra) VALUES (2, 'altered', 7);
BEGIN;
CREATE TABLE in_txn (k text PRIMARY KEY);
INSERT INTO in_txn VALUES ('a'), ('b');
COMMIT;
TRUNCATE public.junk;
RESET search_path;
INSERT INTO items VALUES (2, 'public again');
"""
    run_psql(dual_proxy.port, pg_pair.old, script)
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("public.items", order="id")[0] == 2
    assert pg_pair.assert_same("app.items", order="id")[0] == 18
    assert pg_pair.assert_same("app.audit", order="id")[0] == 2
    assert pg_pair.assert_same("app.in_txn", order="k")[0] == 2
    assert pg_pair.assert_same("public.junk")[0] == 0
    # The DDL itself reached the new store: same columns and the index exists there.
    schema_sql = (
        "SELECT string_agg(column_name || ':' || data_type || ':' || coalesce(column_default, ''),"
        " ',' ORDER BY ordinal_position) FROM information_schema.columns"
        " WHERE table_schema = 'app' AND table_name = 'audit'"
    )
    index_sql = (
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND indexname = 'audit_what'"
    )
    shapes = []
    for which in ("old", "new"):
        with pg_pair.connect(which) as c:
            cols = c.execute(schema_sql).fetchone()
            idx = c.execute(index_sql).fetchone()
            shapes.append((cols, idx))
    assert shapes[0] == shapes[1]
    assert shapes[1][1] == (1,)
    assert_no_divergences(dual_proxy)


def test_session_state_prepare_and_functions(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    """Values whose meaning depends on session settings, and server-side statements."""
    pg_pair.run_both("CREATE TABLE ev (id int PRIMARY KEY, at timestamptz, day date, v text)")
    script = """
SET TIME ZONE 'Asia/Tokyo';
SET datestyle = 'SQL, DMY';
INSERT INTO ev VALUES (1, '2024-01-01 10:00', '01/02/2024', 'tokyo, day first');
BEGIN;
SET LOCAL TIME ZONE 'America/New_York';
INSERT INTO ev VALUES (2, '2024-01-01 10:00', '03/04/2024', 'set local');
COMMIT;
INSERT INTO ev VALUES (3, '2024-01-01 10:00', '05/06/2024', 'tokyo again');
BEGIN;
SET TIME ZONE 'UTC';
ROLLBACK;
INSERT INTO ev VALUES (4, '2024-01-01 10:00', '07/08/2024', 'rolled-back SET');
PREPARE ins(int, text) AS INSERT INTO ev (id, v) VALUES ($1, $2);
EXECUTE ins(5, 'prepared');
BEGIN;
EXECUTE ins(6, 'prepared in a transaction');
DEALLOCATE ins;
PREPARE ins(int) AS INSERT INTO ev (id, v) VALUES ($1, 'prepared again');
EXECUTE ins(7);
COMMIT;
EXECUTE ins(8);
DO $$ BEGIN INSERT INTO ev (id, v) VALUES (9, 'do block'); END $$;
CREATE FUNCTION add_ev(int) RETURNS void LANGUAGE sql AS 'INSERT INTO ev (id, v) VALUES ($1, ''function'')';
SELECT add_ev(10);
SELECT add_ev(g) FROM generate_series(11, 20) g;
"""
    run_psql(dual_proxy.port, pg_pair.old, script)
    dual_proxy.wait_mirror_idle()
    assert pg_pair.assert_same("ev", order="id")[0] == 20
    assert_no_divergences(dual_proxy)


def test_client_encoding(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    """The mirror reads the client's bytes in the client's encoding."""
    pg_pair.run_both("CREATE TABLE words (id int PRIMARY KEY, w text)")
    script = (
        "INSERT INTO words VALUES (1, 'caf\xe9');\n"  # LATIN1 from the startup packet
        "\\encoding UTF8\n"
        "INSERT INTO words VALUES (2, 'caf\xc3\xa9');\n"
        "SET client_encoding = 'LATIN1';\n"
        "INSERT INTO words VALUES (3, 'na\xefve \xbd');\n"
    ).encode("latin1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCLIENTENCODING"] = "LATIN1"
    cmd = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(dual_proxy.port)]
    proc = subprocess.run(
        [*cmd, "-U", "postgres", "-d", pg_pair.old], input=script, capture_output=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    dual_proxy.wait_mirror_idle()
    pg_pair.assert_same("words", order="id")
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT w FROM words ORDER BY id").fetchall() == [
            ("café",),
            ("café",),
            ("naïve ½",),
        ]
    assert_no_divergences(dual_proxy)
