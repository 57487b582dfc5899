"""pgbench through the proxy: the tpcb-like workload in every query mode, and -i itself.

The workload runs 8 concurrent clients for a few seconds per query mode.  Each
tpcb-like transaction adds a delta to one account, teller and branch, so the
mirrored totals only agree if every committed transaction reached the new store
exactly once.  pgbench_history.mtime comes from CURRENT_TIMESTAMP (pinning it is a
later issue), so history is compared on (tid, bid, aid, delta) only.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DURATION = "8"


def pgbench(
    port: int, db: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    cmd = ["pgbench", "-h", PG_HOST, "-p", str(port), "-U", PG_USER, *args, db]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_pgbench_tables_same(pair: PgPair) -> dict[str, int]:
    counts = {
        "pgbench_accounts": pair.assert_same("pgbench_accounts", order="aid")[0],
        "pgbench_branches": pair.assert_same("pgbench_branches", order="bid")[0],
        "pgbench_tellers": pair.assert_same("pgbench_tellers", order="tid")[0],
        "pgbench_history": pair.assert_same(
            "pgbench_history", columns="tid, bid, aid, delta", order="tid, bid, aid, delta"
        )[0],
    }
    return counts


@pytest.mark.parametrize("query_mode", ["simple", "extended", "prepared"])
def test_tpcb_like_workload(pg_pair: PgPair, dual_proxy: ProxyProcess, query_mode: str) -> None:
    for db in (pg_pair.old, pg_pair.new):
        pgbench(PG_PORT, db, "-i", "-s", "2", "-q")
    out = pgbench(
        dual_proxy.port, pg_pair.old, "-M", query_mode, "-c", "8", "-j", "2", "-T", DURATION
    )
    assert "number of failed transactions: 0" in out.stdout, out.stdout
    dual_proxy.wait_mirror_idle(timeout=90)
    counts = assert_pgbench_tables_same(pg_pair)
    assert counts["pgbench_accounts"] == 200_000
    assert counts["pgbench_history"] > 100, out.stdout  # the workload really ran
    with pg_pair.connect("new") as c:
        totals = c.execute(
            "SELECT (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(abalance) FROM pgbench_accounts),"
            " (SELECT sum(delta) FROM pgbench_history)"
        ).fetchone()
    assert totals is not None and len(set(totals)) == 1, totals
    assert_no_divergences(dual_proxy)


@pytest.mark.parametrize("steps", ["dtgvp", "dtGvpf"])
def test_initialize_through_proxy(pg_pair: PgPair, dual_proxy: ProxyProcess, steps: str) -> None:
    """-i drops and creates tables, loads with COPY (g) or INSERT ... SELECT (G), vacuums."""
    pgbench(dual_proxy.port, pg_pair.old, "-i", "-s", "1", "-q", "-I", steps)
    # Straight away, without waiting for the mirror: the second run's DROP TABLE
    # (another session) must not overtake the first run's mirrored VACUUM and
    # ALTER TABLE, which committed before it began (causal order across sessions).
    # Running it again replaces everything (DROP TABLE IF EXISTS of existing tables).
    pgbench(dual_proxy.port, pg_pair.old, "-i", "-s", "1", "-q", "-I", steps, "--fillfactor", "90")
    dual_proxy.wait_mirror_idle(timeout=90)
    counts = assert_pgbench_tables_same(pg_pair)
    assert counts == {
        "pgbench_accounts": 100_000,
        "pgbench_branches": 1,
        "pgbench_tellers": 10,
        "pgbench_history": 0,
    }
    keys_sql = (
        "SELECT string_agg(conrelid::regclass || ':' || contype::text, ',' ORDER BY conrelid::regclass::text, contype)"
        " FROM pg_constraint WHERE conrelid::regclass::text LIKE 'pgbench_%'"
    )
    shapes = []
    for which in ("old", "new"):
        with pg_pair.connect(which) as c:
            shapes.append(c.execute(keys_sql).fetchone())
    assert shapes[0] == shapes[1]
    assert_no_divergences(dual_proxy)
