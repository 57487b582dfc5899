"""Order across sessions: a transaction that began after another one committed
reaches the mirror after it, even when the two ran on different connections
(a connection pool) and the first is slow to apply on the mirror."""

from __future__ import annotations

import psycopg

from tests.conftest import PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences


def test_pool_style_sequential_transactions_keep_commit_order(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both("CREATE TABLE counter (id int PRIMARY KEY, v bigint NOT NULL)")
    pg_pair.run_both("INSERT INTO counter VALUES (1, 1)")
    a = psycopg.connect(dual_proxy.dsn(pg_pair.old))
    b = psycopg.connect(dual_proxy.dsn(pg_pair.old), autocommit=True)
    try:
        for _ in range(5):
            # A is slow on the mirror too (pg_sleep is mirrored: it is not a known
            # side-effect-free function) and touches the row only at its end.
            a.execute("SELECT pg_sleep(0.2)")
            a.execute("UPDATE counter SET v = v + 1 WHERE id = 1")
            a.commit()
            # B starts after A committed; v * 2 does not commute with v + 1.
            b.execute("UPDATE counter SET v = v * 2 WHERE id = 1")
    finally:
        a.close()
        b.close()
    dual_proxy.wait_mirror_idle()
    with pg_pair.connect("old") as c:
        row = c.execute("SELECT v FROM counter").fetchone()
    assert row == (94,)  # 1 -> 2,4 -> 5,10 -> 11,22 -> 23,46 -> 47,94
    pg_pair.assert_same("counter")
    assert_no_divergences(dual_proxy)
