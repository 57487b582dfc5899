"""Statement classification (stub; see issue 2 scope 4)."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    TXN = "txn"  # BEGIN / COMMIT / ROLLBACK / SAVEPOINT ...
    SESSION = "session"  # SET / RESET / DISCARD / PREPARE / DEALLOCATE / LISTEN ...
    DDL = "ddl"


def classify(sql: str) -> Kind:
    head = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else ""
    if head in ("select", "show", "values", "table", "explain", "fetch"):
        return Kind.READ
    if head in ("begin", "start", "commit", "end", "rollback", "savepoint", "release", "abort"):
        return Kind.TXN
    if head in ("set", "reset", "discard", "prepare", "deallocate", "listen", "unlisten"):
        return Kind.SESSION
    if head in ("create", "alter", "drop"):
        return Kind.DDL
    return Kind.WRITE
