"""Transaction-control rules the lock-step applies to statement text (pure).

``txn_action`` says what a transaction-control statement does to the
transaction (so the lock-step knows a commit point when it sees one), and
``wrappable`` whether an autocommit simple Query may run inside the
BEGIN ... COMMIT the lock-step wraps it in.
"""

from __future__ import annotations

import re
from typing import Final

from proxy.classify import Kind, _next_word, _statements, classify

# Statements PostgreSQL refuses inside a transaction block: never wrapped.
_NO_TXN_BLOCK = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*"  # leading blanks and comments
    r"(vacuum|create\s+database|drop\s+database|create\s+tablespace|drop\s+tablespace"
    r"|alter\s+system|alter\s+database\s+\S+\s+set\s+tablespace"
    r"|(create|drop)\s+(unique\s+)?index\s+concurrently"
    r"|reindex\s.*\bconcurrently\b|reindex\s+(\(.*?\)\s*)?(schema|database|system)\b"
    r"|cluster\s*(;|$|\(|verbose\s*(;|$)))",
    re.IGNORECASE | re.DOTALL,
)


# txn_action by statement text: asked for every BEGIN and COMMIT a session sends,
# and an application sends a handful of distinct texts.
_TXN_ACTIONS: dict[str, str] = {}
_TXN_ACTIONS_MAX: Final = 1024


def txn_action(sql: str) -> str:
    """'begin', 'commit', 'rollback' or '' for one transaction-control statement."""
    found = _TXN_ACTIONS.get(sql)
    if found is None:
        if len(_TXN_ACTIONS) >= _TXN_ACTIONS_MAX:
            _TXN_ACTIONS.clear()
        found = _TXN_ACTIONS[sql] = _txn_action(sql)
    return found


def _txn_action(sql: str) -> str:
    word, end = _next_word(sql)
    nxt = _next_word(sql, end)[0]
    if word in ("begin", "start"):
        return "begin"
    if word in ("commit", "end"):
        return "" if nxt == "prepared" else "commit"
    if word in ("rollback", "abort"):
        if nxt in ("work", "transaction"):
            nxt = _next_word(sql, _next_word(sql, end)[1])[0]
        return "" if nxt in ("to", "prepared") else "rollback"
    return ""


def wrappable(sql: str) -> str:
    """'' if an autocommit Query can run inside BEGIN ... COMMIT, else why not."""
    parts = list(_statements(sql.rstrip(" \t\r\n;"))) if ";" in sql else [sql]
    for part in parts:
        if _NO_TXN_BLOCK.match(part):
            return "no transaction block"
        if len(parts) > 1 and classify(part) is Kind.TXN and txn_action(part):
            return "transaction control in a multi-statement query"
    return ""
