"""Statement classification: one table of (statement, kind), plus fingerprints,
read-only BEGIN detection, written tables and fuzzing that nothing ever raises."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import classify as classify_module
from proxy.classify import (
    Kind,
    classify,
    fingerprint,
    is_read_only_begin,
    read_shape,
    tables_of,
)

R, W, T, S, D = Kind.READ, Kind.WRITE, Kind.TXN, Kind.SESSION, Kind.DDL

# psql's describe commands send catalog queries of this shape (written here by hand).
PSQL_LIST_TABLES = """
SELECT n.nspname AS "Schema", c.relname AS "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' END AS "Type",
  pg_catalog.pg_get_userbyid(c.relowner) AS "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r','p','v','m','S','f','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"""
PSQL_DESCRIBE_COLUMNS = """
SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation)
    AS attcollation,
  pg_catalog.col_description(a.attrelid, a.attnum)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"""
PSQL_FIND_RELATION = """
SELECT c.oid, n.nspname, c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(pgbench_accounts)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"""
PSQL_INDEXES = """
SELECT c2.relname, i.indisprimary, i.indisunique,
  pg_catalog.pg_get_indexdef(i.indexrelid, 0, true),
  pg_catalog.pg_get_constraintdef(con.oid, true), contype
FROM pg_catalog.pg_class c, pg_catalog.pg_class c2, pg_catalog.pg_index i
  LEFT JOIN pg_catalog.pg_constraint con
    ON (conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x'))
WHERE c.oid = '16384' AND c.oid = i.indrelid AND i.indexrelid = c2.oid
ORDER BY i.indisprimary DESC, c2.relname;"""
PSQL_SIZES = """
SELECT n.nspname, c.relname,
  pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid)) AS "Size",
  pg_catalog.obj_description(c.oid, 'pg_class') AS "Description",
  pg_catalog.array_to_string(c.relacl, E'\\n') AS "Access privileges"
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE pg_catalog.pg_has_role(c.relowner, 'USAGE') AND c.relname ~ '^(t.*)$'"""
PSQL_FUNCTIONS = """
SELECT p.proname, pg_catalog.pg_get_function_result(p.oid),
  pg_catalog.pg_get_function_arguments(p.oid)
FROM pg_catalog.pg_proc p
WHERE pg_catalog.pg_function_is_visible(p.oid)
  AND has_function_privilege(p.oid, 'EXECUTE')"""

CASES: list[tuple[str, Kind]] = [
    # empty queries
    ("", R),
    ("   \n\t", R),
    (";", R),
    (" ; ;; ", R),
    ("-- nothing here", R),
    ("/* only */ /* comments */ ;", R),
    # pgbench's own statements
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 123;", R),
    ("UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 12;", W),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + -4 WHERE tid = 3;", W),
    ("UPDATE pgbench_branches SET bbalance = bbalance + -4 WHERE bid = 1;", W),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP);",
        W,
    ),
    ("BEGIN;", T),
    ("END;", T),
    ("select count(*) from pgbench_branches", R),
    ("vacuum pgbench_branches", D),
    ("truncate pgbench_history", W),
    # plain reads, case, comments, parentheses
    ("select 1", R),
    ("SeLeCt * FrOm t", R),
    ("  \n\tselect a from t where b = $1", R),
    ("-- leading comment\nSELECT a FROM t", R),
    ("/* block */ select a from t", R),
    ("/* nested /* block */ comment */ select a from t", R),
    ("(select 1) union all (select 2)", R),
    ("select a from t where b = 'for update'", R),
    ("select a from t where note = 'insert into x'", R),
    ("select format, before from platform", R),
    ("select a from t -- for update", R),
    ("select a from t where b in (select c from u)", R),
    ("show search_path", R),
    ("SHOW ALL", R),
    ("table pgbench_accounts", R),
    ("values (1, 'a'), (2, 'b')", R),
    ("fetch 100 from c1", R),
    ("move next in c1", R),
    ("close c1", R),
    ("explain select * from t", R),
    ("explain delete from t", R),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", R),
    ("explain analyze select count(*) from t", R),
    ("declare c1 cursor for select * from t", R),
    ("copy t to stdout", R),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv)", R),
    ("copy (select a from t) to stdout", R),
    # side-effect-free functions
    ("select now(), current_setting('search_path'), version()", R),
    ("select count(*), sum(a), avg(a), min(a), max(a) from t", R),
    ("select coalesce(a, 0), nullif(b, 1), greatest(a, b), least(a, b) from t", R),
    ("select lower(a), upper(b), length(c), substr(d, 1, 2), abs(e), round(f) from t", R),
    ("select to_char(now(), 'YYYY'), date_trunc('day', ts), extract(year from ts) from t", R),
    ("select json_build_object('a', 1), jsonb_agg(t), row_to_json(t) from t", R),
    ("select string_agg(a, ','), array_agg(b) from t group by c", R),
    ("select row_number() over (order by a), rank() over w from t window w as (order by b)", R),
    ("select * from generate_series(1, 10) g", R),
    ("select random(), gen_random_uuid()", R),
    ("select currval('s'), lastval()", R),
    ("select pg_backend_pid(), pg_catalog.pg_get_userbyid(10)", R),
    ("select information_schema._pg_char_max_length(1, 2)", R),
    ("with x as (select count(*) from t) select * from x", R),
    (
        "with recursive r(n) as (select 1 union all select n + 1 from r where n < 5) select * from r",
        R,
    ),
    # psql catalog queries
    (PSQL_LIST_TABLES, R),
    (PSQL_DESCRIBE_COLUMNS, R),
    (PSQL_FIND_RELATION, R),
    (PSQL_INDEXES, R),
    (PSQL_SIZES, R),
    (PSQL_FUNCTIONS, R),
    # writes by keyword
    ("insert into t values (1)", W),
    ("InSeRt InTo t VALUES (1)", W),
    ("update t set a = 1", W),
    ("delete from t where a = 1", W),
    ("merge into t using u on t.id = u.id when matched then delete", W),
    ("truncate a, b", W),
    ("copy t from stdin", W),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", W),
    ("call refresh_totals()", W),
    ("do $$ begin perform 1; end $$", W),
    ("lock table t in access exclusive mode", W),
    ("refresh materialized view mv", W),
    ("notify channel, 'payload'", W),
    ("execute p1(1, 2)", W),
    ("frobnicate the database", W),
    ("(insert into t values (1))", W),
    # SELECT and WITH that write
    ("select * from t for update", W),
    ("SELECT * FROM t WHERE a = 1 FOR NO KEY UPDATE", W),
    ("select * from t for share skip locked", W),
    ("select * from t\nfor key share", W),
    ("select a from t where b in (select c from u for update)", W),
    ("select a into new_table from t", W),
    ("select nextval('orders_id_seq')", W),
    ("select setval('orders_id_seq', 42)", W),
    ("select pg_advisory_lock(1)", W),
    ("select pg_try_advisory_xact_lock(1, 2)", W),
    ("select pg_advisory_unlock_all()", W),
    ("select set_config('search_path', 'app', false)", W),
    ("select pg_notify('ch', 'x')", W),
    ("select lo_create(0), lo_unlink(16400)", W),
    ("select txid_current()", W),
    ("select pg_current_xact_id()", W),
    ("select pg_terminate_backend(123)", W),
    ("select pg_cancel_backend(123)", W),
    ("select dblink_exec('dbname=x', 'delete from t')", W),
    ("select my_function(1)", W),
    ("select app.compute_totals()", W),
    ("select public.lower('A')", W),
    ('select "Count"(1)', W),
    ("select a, (select nextval('s')) from t", W),
    ("select * from t where a = any(select audit_log(b) from u)", W),
    ("values (nextval('s'))", W),
    ("with x as (delete from t where a = 1 returning *) select * from x", W),
    ("with x as (select 1 as a) insert into t select a from x", W),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT count(*) FROM u", W),
    ("with x as (select nextval('s')) select * from x", W),
    ("explain analyze delete from t", W),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", W),
    ("explain analyze select nextval('s')", W),
    ("declare c1 cursor for select * from t for update", W),
    ("copy (delete from t returning *) to stdout", W),
    # transaction control
    ("begin", T),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", T),
    ("start transaction read only", T),
    ("commit", T),
    ("COMMIT AND CHAIN", T),
    ("rollback", T),
    ("abort", T),
    ("savepoint s1", T),
    ("release savepoint s1", T),
    ("rollback to savepoint s1", T),
    ("prepare transaction 'gid-1'", T),
    ("/* c */ PREPARE TRANSACTION 'gid-1'", T),
    ("commit prepared 'gid-1'", T),
    ("rollback prepared 'gid-1'", T),
    # session state
    ("set search_path = app, public", S),
    ("SET LOCAL statement_timeout = 0", S),
    ("set transaction isolation level repeatable read", S),
    ("set session characteristics as transaction read only", S),
    ("reset all", S),
    ("discard all", S),
    ("prepare p1 as select * from t where a = $1", S),
    ("deallocate p1", S),
    ("listen ch", S),
    ("unlisten *", S),
    ("load 'auto_explain'", S),
    # DDL and maintenance
    ("create table t (a int)", D),
    ("CREATE TEMP TABLE tmp (a int)", D),
    ("create index concurrently i on t (a)", D),
    ("alter table t add column b text", D),
    ("drop table t", D),
    ("comment on table t is 'x'", D),
    ("grant select on t to app", D),
    ("revoke all on t from app", D),
    ("security label for selinux on table t is 'x'", D),
    ("vacuum analyze t", D),
    ("analyze t", D),
    ("cluster t using i", D),
    ("reindex table t", D),
    ("checkpoint", D),
    ("create table t2 as select * from t", D),
    # several statements: the strongest kind wins
    ("select 1; select 2", R),
    ("select 1; insert into t values (1)", W),
    ("begin; select 1; commit;", T),
    ("begin; update t set a = 1; commit;", W),
    ("set a = 1; select 1", S),
    ("create table t (a int); insert into t values (1)", D),
    ("select 'a;b'; select 2", R),
    ("select ';'", R),
    ("select 1; -- trailing comment", R),
    ("select 1;;; select 2 for update", W),
    ("selec 1; select 2", W),
    ("create function f() returns int language sql begin atomic select 1; end; select 1", D),
    # text libpg_query rejects
    ("select 'unterminated", R),
    ("select a from t where", R),
    ("select a from t where b = (", R),
    ("select foo(", W),
    ("select a from t for", W),
    ("copy t (a, b) from", W),
    ("copy (select a from b) to", R),
    ("explain analyze", W),
    ("declare c cursor for selec nextval(", W),
    ("123", W),
    ("$$", W),
]


def test_case_count() -> None:
    assert len(CASES) >= 80
    assert len({sql for sql, _ in CASES}) == len(CASES), "duplicate case"


@pytest.mark.parametrize(("sql", "kind"), CASES, ids=[f"{i:03d}" for i in range(len(CASES))])
def test_classify(sql: str, kind: Kind) -> None:
    assert classify(sql) is kind
    assert classify(sql) is kind  # second time from the cache


def test_kind_values_unchanged() -> None:
    assert {k.name: k.value for k in Kind} == {
        "READ": "read",
        "WRITE": "write",
        "TXN": "txn",
        "SESSION": "session",
        "DDL": "ddl",
    }


def test_cached_result_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "select a from cached_only_once where b = (select 1)"
    assert classify(sql) is R

    def boom(_: str) -> Kind:
        raise AssertionError("classified twice")

    monkeypatch.setattr(classify_module, "_classify_text", boom)
    assert classify(sql) is R


def test_text_cache_is_bounded() -> None:
    cache: classify_module._TextCache[int] = classify_module._TextCache(
        max_entries=3, max_chars=1600
    )
    for i in range(3):
        cache.put(f"q{i}", i)
    assert len(cache.data) == 3
    cache.put("q3", 3)  # full: cleared, then stored
    assert cache.data == {"q3": 3}
    cache.put("x" * 99, 4)
    cache.put("y" * 99, 5)
    assert len(cache.data) == 3
    cache.put("z" * 100, 6)  # one sixteenth of max_chars at most
    cache.put("w" * 101, 7)  # too big to cache at all
    assert "w" * 101 not in cache.data


# ------------------------------------------------------------------- read-only BEGIN


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BEGIN READ ONLY", True),
        ("begin read only;", True),
        ("BEGIN TRANSACTION READ ONLY", True),
        ("begin work read only", True),
        ("START TRANSACTION READ ONLY", True),
        ("start transaction isolation level serializable, read only, deferrable", True),
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY", True),
        ("BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY", True),
        ("begin isolation level read uncommitted read only not deferrable", True),
        ("SET TRANSACTION READ ONLY", True),
        ("set transaction isolation level serializable read only", True),
        ("/* app */ BEGIN\n  READ\n  ONLY", True),
        ("BEGIN READ ONLY; SELECT 1", True),
        ("BEGIN", False),
        ("BEGIN;", False),
        ("begin read write", False),
        ("begin isolation level read committed", False),
        ("begin read only, read write", False),
        ("START TRANSACTION", False),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", False),
        ("set transaction snapshot '00000003-0000001B-1'", False),
        ("set session characteristics as transaction read only", False),
        ("set default_transaction_read_only = on", False),
        ("select 'begin read only'", False),
        ("commit", False),
        ("", False),
        ("begin; set transaction read only", False),
    ],
)
def test_is_read_only_begin(sql: str, expected: bool) -> None:
    assert is_read_only_begin(sql) is expected


# ---------------------------------------------------------------------- fingerprint


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 12;",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            "VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        ),
        ("select a from t where b = $1 and c = 'x'", "select a from t where b = $1 and c = $2"),
        ("/* app=web */ select 1  -- 2\n", "select $1"),
        ("COMMENT ON TABLE t IS 'secret note'", "COMMENT ON TABLE t IS $1"),
        (
            "create table t (a varchar(255) default 'zz')",
            "create table t (a varchar($1) default $2)",
        ),
        ("BEGIN", "BEGIN"),
    ],
)
def test_fingerprint(sql: str, expected: str) -> None:
    assert fingerprint(sql) == expected


def test_fingerprint_same_shape_same_fingerprint() -> None:
    a = fingerprint("UPDATE t SET v = v + 1 WHERE id = 10 AND tag = 'red'")
    b = fingerprint("UPDATE  t SET v = v + 250\n WHERE id = 99 AND tag = 'blue';")
    assert a == b
    assert fingerprint("select 1") != fingerprint("select 1 from t")


def test_fingerprint_fallback_when_unparseable() -> None:
    fp = fingerprint("SELEC name FROM users WHERE password = 'hunter2' AND pin = 1234 -- 99")
    assert fp == "SELEC name FROM users WHERE password = ? AND pin = ?"
    assert fingerprint("select 'never closed 4242") == "select ?"
    assert "77" not in fingerprint("selec $tag$ 77 $tag$, 0x77, 7.7e7")


def test_fingerprint_is_truncated() -> None:
    sql = "select " + ", ".join(f"column_{i}" for i in range(200)) + " from t"
    assert len(fingerprint(sql)) == 500


MARK = "zqxj"
SECRET_NUMBER = st.integers(min_value=10**6, max_value=10**15)
SECRET_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(
    lambda s: MARK + s
)
TEMPLATES = [
    "SELECT a FROM t WHERE b = {n} AND c = '{s}'",
    "INSERT INTO t (a, b) VALUES ({n}, '{s}')",
    "UPDATE t SET a = a + {n} WHERE c = E'{s}'",
    "DELETE FROM t WHERE a = -{n}.5 OR b = '{s}'",
    "COMMENT ON TABLE t IS '{s}'",
    "select * from t limit {n}",
    "CREATE TABLE t (a varchar({n}) default '{s}')",
    "ALTER ROLE bob PASSWORD '{s}' CONNECTION LIMIT {n}",
    "PREPARE TRANSACTION '{s}{n}'",
    "COPY t FROM '/tmp/{s}{n}.csv'",
    "select $q${s}$q$, {n}e3",
    "/* {s} {n} */ select 1 -- {s} {n}",
    "SELEC a FROM t WHERE b = {n} AND c = '{s}'",
    "select '{s} {n}",
    "insert into t values ({n}, '{s}'); garbage ( {n}",
]


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(TEMPLATES), SECRET_NUMBER, SECRET_TEXT)
def test_fingerprint_never_leaks_literals(template: str, n: int, s: str) -> None:
    sql = template.format(n=n, s=s.replace("'", "''").replace("$", ""))
    fp = fingerprint(sql)
    assert str(n) not in fp
    assert MARK not in fp
    assert len(fp) <= 500


# ------------------------------------------------------------------------ tables_of


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("INSERT INTO pgbench_history (tid) VALUES (1)", ("pgbench_history",)),
        ("UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 1", ("pgbench_accounts",)),
        ("delete from app.orders where id = 1", ("app.orders",)),
        ("merge into t using u on t.id = u.id when matched then delete", ("t",)),
        ("copy t from stdin", ("t",)),
        ("copy t to stdout", ()),
        ("truncate a, s.b, a", ("a", "s.b")),
        ("with x as (insert into a values (1) returning *) update b set c = 1 from x", ("a", "b")),
        ('insert into "MixedCase" values (1); delete from u', ("MixedCase", "u")),
        ("select a into new_table from t", ("new_table",)),
        ("explain delete from t", ()),
        ("explain analyze delete from t", ("t",)),
        ("select * from t", ()),
        ("begin", ()),
        ("not sql at all (", ()),
    ],
)
def test_tables_of(sql: str, tables: tuple[str, ...]) -> None:
    assert tables_of(sql) == tables
    assert tables_of(sql) == tables  # cached


# --------------------------------------------------------------------------- fuzzing

SQL_TOKENS = [
    "select", "insert", "update", "delete", "with", "as", "for", "into", "from", "copy",
    "to", "explain", "analyze", "declare", "cursor", "begin", "read", "only", "(", ")",
    ";", ",", "'", "''", '"', "$$", "$a$", "--", "\n", "/*", "*/", "nextval", "count",
    "t", "1", "-4", "1.5e3", "$1", "values", "returning", "*", "=", "E'\\''", "\x00",
    "\ud800", "é", "(((((((((", ")))))))))",
]  # fmt: skip


@settings(max_examples=400, deadline=None, database=None)
@given(st.text())
def test_nothing_raises_on_arbitrary_text(sql: str) -> None:
    assert isinstance(classify(sql), Kind)
    assert isinstance(fingerprint(sql), str)
    assert isinstance(tables_of(sql), tuple)
    assert isinstance(is_read_only_begin(sql), bool)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.sampled_from(SQL_TOKENS), max_size=40).map(" ".join))
def test_nothing_raises_on_sql_like_text(sql: str) -> None:
    assert isinstance(classify(sql), Kind)
    fp = fingerprint(sql)
    if '"' not in sql:  # a quoted identifier may hold digits
        assert not re.search(r"(?<![\w$])-?\d", fp), fp
    assert isinstance(tables_of(sql), tuple)
    assert isinstance(is_read_only_begin(sql), bool)


def test_hostile_inputs() -> None:
    deep = "select " + "(" * 20_000 + "1" + ")" * 20_000
    assert classify(deep) is R
    assert classify("select " + "nextval(" * 5000) is W
    assert classify("select '\ud800' for update") is W
    assert classify("insert into t values ('\ud800')") is W
    assert "\ud800" not in fingerprint("select '\ud800'")
    assert tables_of("insert into t values ('\ud800')") == ()


def test_read_shape_shares_one_parse_per_shape() -> None:
    a, ordered = read_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4321")
    b, _ = read_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 77")
    assert a == b == fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    assert "4321" not in a and not ordered
    assert read_shape("SELECT v FROM t WHERE k = 'x'")[0] != a


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("SELECT * FROM t ORDER BY id", True),
        ("select * from t order\n  by id desc", True),
        ("SELECT * FROM t WHERE k = 'x' ORDER BY id LIMIT 5", True),
        ("SELECT * FROM t", False),
        ("SELECT border_by FROM t", False),
        ("SELECT * FROM t WHERE x = 'reorder'", False),
        ("SELECT * FROM t WHERE x = 'order by'", False),
        ("SELECT * FROM t -- order by id", False),
    ],
)
def test_read_shape_says_whether_rows_are_ordered(sql: str, ordered: bool) -> None:
    assert read_shape(sql)[1] is ordered
    assert read_shape(sql)[1] is ordered  # answered from the cache the second time
