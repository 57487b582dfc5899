"""Statement kinds read from CommandComplete tags (the no-mirroring path)."""

from __future__ import annotations

import pytest

from proxy.classify import Kind, kind_of_tag

CASES = [
    (b"SELECT 1\0", Kind.READ),
    (b"SELECT 0\0", Kind.READ),
    (b"FETCH 100\0", Kind.READ),
    (b"SHOW\0", Kind.READ),
    (b"INSERT 0 1\0", Kind.WRITE),
    (b"UPDATE 7\0", Kind.WRITE),
    (b"DELETE 0\0", Kind.WRITE),
    (b"MERGE 3\0", Kind.WRITE),
    (b"COPY 3000\0", Kind.WRITE),
    (b"TRUNCATE TABLE\0", Kind.WRITE),
    (b"BEGIN\0", Kind.TXN),
    (b"COMMIT\0", Kind.TXN),
    (b"ROLLBACK\0", Kind.TXN),
    (b"SAVEPOINT\0", Kind.TXN),
    (b"RELEASE\0", Kind.TXN),
    (b"SET\0", Kind.SESSION),
    (b"RESET\0", Kind.SESSION),
    (b"DISCARD ALL\0", Kind.SESSION),
    (b"DEALLOCATE ALL\0", Kind.SESSION),
    (b"LISTEN\0", Kind.SESSION),
    (b"CREATE TABLE\0", Kind.DDL),
    (b"ALTER TABLE\0", Kind.DDL),
    (b"DROP INDEX\0", Kind.DDL),
    (b"VACUUM\0", Kind.DDL),
]


@pytest.mark.parametrize(("tag", "kind"), CASES)
def test_kind_of_tag(tag: bytes, kind: Kind) -> None:
    assert kind_of_tag(tag) is kind
    assert kind_of_tag(tag) is kind  # cached answer is the same
