"""Lock-step's statement rules: what a transaction-control statement does, and
whether an autocommit Query may be wrapped in BEGIN ... COMMIT.

The refusals listed here are PostgreSQL's own ("... cannot run inside a
transaction block"): wrapping one of them would turn the client's success into
an error.
"""

from __future__ import annotations

import pytest

from proxy.relay.txn_rules import txn_action, wrappable

TXN_ACTIONS = [
    ("BEGIN", "begin"),
    ("begin", "begin"),
    ("BEGIN WORK", "begin"),
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", "begin"),
    ("START TRANSACTION READ ONLY", "begin"),
    ("COMMIT", "commit"),
    ("commit;", "commit"),
    ("COMMIT WORK", "commit"),
    ("END", "commit"),
    ("END TRANSACTION", "commit"),
    ("COMMIT AND CHAIN", "commit"),
    ("COMMIT PREPARED 'x'", ""),
    ("ROLLBACK", "rollback"),
    ("ROLLBACK WORK", "rollback"),
    ("ROLLBACK AND CHAIN", "rollback"),
    ("ABORT", "rollback"),
    ("ABORT TRANSACTION", "rollback"),
    ("ROLLBACK TO SAVEPOINT a", ""),
    ("ROLLBACK TO a", ""),
    ("ROLLBACK WORK TO a", ""),
    ("ROLLBACK TRANSACTION TO SAVEPOINT a", ""),
    ("ROLLBACK PREPARED 'x'", ""),
    ("SAVEPOINT a", ""),
    ("RELEASE SAVEPOINT a", ""),
    ("PREPARE TRANSACTION 'x'", ""),
    ("SET TRANSACTION READ ONLY", ""),
    ("  \n\tCOMMIT", "commit"),
    ("/* why */ -- and more\n  rollback", "rollback"),
    ("/* outer /* nested */ still */ BEGIN", "begin"),
    ("-- ROLLBACK\nCOMMIT", "commit"),
    ("/* x */ ROLLBACK /* y */ TO /* z */ a", ""),
    ("", ""),
]


@pytest.mark.parametrize(("sql", "action"), TXN_ACTIONS)
def test_txn_action(sql: str, action: str) -> None:
    assert txn_action(sql) == action


NO_BLOCK = "no transaction block"
TXN_CONTROL = "transaction control in a multi-statement query"

WRAPPABLE = [
    ("UPDATE t SET a = 1", ""),
    ("INSERT INTO t VALUES (1);", ""),
    ("CREATE INDEX i ON t (a)", ""),
    ("REINDEX INDEX i", ""),
    ("UPDATE t SET a = 1; UPDATE t SET b = 2;", ""),
    ("UPDATE t SET a = 'x;y'", ""),
    ("INSERT INTO t VALUES ('a; VACUUM')", ""),
    ("INSERT INTO t VALUES ('COMMIT; x'); UPDATE t SET a = 2", ""),
    ("SAVEPOINT a; UPDATE t SET a = 1", ""),
    ("UPDATE t SET a = 1 -- done; COMMIT", ""),
    ("VACUUM", NO_BLOCK),
    ("vacuum analyze t", NO_BLOCK),
    ("  VACUUM (VERBOSE) t", NO_BLOCK),
    ("CREATE DATABASE x", NO_BLOCK),
    ("DROP DATABASE x", NO_BLOCK),
    ("CREATE TABLESPACE x LOCATION '/x'", NO_BLOCK),
    ("ALTER DATABASE d SET TABLESPACE x", NO_BLOCK),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", NO_BLOCK),
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", NO_BLOCK),
    ("DROP INDEX CONCURRENTLY i", NO_BLOCK),
    ("REINDEX TABLE CONCURRENTLY t", NO_BLOCK),
    ("REINDEX (VERBOSE) INDEX\n concurrently i", NO_BLOCK),
    ("ALTER SYSTEM SET work_mem = '1MB'", NO_BLOCK),
    ("UPDATE t SET a = 1; VACUUM t", NO_BLOCK),
    ("UPDATE t SET a = 1; /* then */ VACUUM t", NO_BLOCK),
    ("VACUUM t;", NO_BLOCK),
    ("BEGIN; UPDATE t SET a = 1; COMMIT", TXN_CONTROL),
    ("UPDATE t SET a = 1; COMMIT", TXN_CONTROL),
    ("UPDATE t SET a = 1; -- done\nROLLBACK", TXN_CONTROL),
    ("START TRANSACTION; UPDATE t SET a = 1", TXN_CONTROL),
    ("UPDATE t SET a = 1; ROLLBACK TO a", ""),
]


@pytest.mark.parametrize(("sql", "reason"), WRAPPABLE)
def test_wrappable(sql: str, reason: str) -> None:
    assert wrappable(sql) == reason


@pytest.mark.parametrize("sql", ["/* nightly */ VACUUM t", "-- nightly\nVACUUM t"])
def test_commented_vacuum_is_not_wrapped(sql: str) -> None:
    assert wrappable(sql) == NO_BLOCK


@pytest.mark.parametrize(
    "sql", ["REINDEX SCHEMA s", "REINDEX DATABASE d", "REINDEX SYSTEM d", "CLUSTER"]
)
def test_other_statements_refused_in_a_block(sql: str) -> None:
    assert wrappable(sql) == NO_BLOCK
