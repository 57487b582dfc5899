"""``shadowproxy demo`` end to end: a real proxy, a real asyncpg workload, a clean verdict.

The demo is run as a user runs it (a subprocess), on databases with unique names
(``--old-db``/``--new-db``) so parallel runs and the user's own shadow_old/shadow_new
are left alone; the test drops them afterwards.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from proxy.demo import Metrics
from tests.conftest import PG_HOST, PG_PORT, ROOT, SHADOWPROXY, admin_conn

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_dbs() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:10]
    old, new = f"sp_demo_old_{tag}", f"sp_demo_new_{tag}"
    yield old, new
    with contextlib.suppress(psycopg.OperationalError), admin_conn() as c:
        for db in (old, new):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")  # type: ignore[arg-type]


def test_demo_mirrors_a_mixed_workload_without_divergence(demo_dbs: tuple[str, str]) -> None:
    old, new = demo_dbs
    proc = subprocess.run(
        [
            SHADOWPROXY,
            "demo",
            "--seconds",
            "3",
            "--clients",
            "2",
            "--pg",
            f"{PG_HOST}:{PG_PORT}",
            "--old-db",
            old,
            "--new-db",
            new,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{out}\n{proc.stderr}"
    for table in ("customers", "orders", "order_events"):
        assert re.search(rf"^\s+{table}\s+IDENTICAL\s+[\d,]+ rows$", out, re.M), out
    assert "DIFFERENT" not in out
    assert re.search(r"^\s+divergences\s+0\b", out, re.M), out
    # Something was actually mirrored, and the report names where to look.
    applied = re.search(r"mirrored\s+([\d,]+) units", out)
    assert applied and int(applied.group(1).replace(",", "")) > 0, out
    assert "/metrics" in out and "/status" in out and "divergence log" in out
    # It walked the ladder to new-only and back while the workload ran: sessions moved
    # their writes to the new store and back, reads were served by the new store.
    steps = re.findall(r"^\s+[\w-]+ -> ([\w-]+)\s+epoch (\d+), applied", out, re.M)
    assert [m for m, _ in steps] == [
        "shadow-read", "read-new", "write-new", "new-only", "write-new", "dual-write"
    ], out  # fmt: skip
    moved = re.search(
        r"moved their writes [\d,]+ times \(to new ([\d,]+), back to old ([\d,]+)\), 0 failed; ([\d,]+) reads served by the new store",
        out,
    )
    assert moved and all(int(g.replace(",", "")) > 0 for g in moved.groups()), out
    assert f"{old} and {new} are left in place" in out
    # The demo leaves the databases for the user to inspect.
    with admin_conn() as c:
        names = {r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()}
    assert {old, new} <= names


def test_demo_rejects_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxy.demo", "--old-db", "same", "--new-db", "same"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "must differ" in proc.stderr


def test_lag_quantiles_from_prometheus_buckets() -> None:
    text = """\
# HELP shadowproxy_mirror_lag_seconds lag
# TYPE shadowproxy_mirror_lag_seconds histogram
shadowproxy_mirror_lag_seconds_bucket{le="0.001"} 0.0
shadowproxy_mirror_lag_seconds_bucket{le="0.005"} 50.0
shadowproxy_mirror_lag_seconds_bucket{le="0.01"} 90.0
shadowproxy_mirror_lag_seconds_bucket{le="0.05"} 100.0
shadowproxy_mirror_lag_seconds_bucket{le="+Inf"} 100.0
shadowproxy_mirror_lag_seconds_count 100.0
shadowproxy_mirror_lag_seconds_sum 0.4
shadowproxy_statements_total{kind="read",store="old"} 7.0
shadowproxy_statements_total{kind="write",store="old"} 3.0
shadowproxy_statements_total{kind="write",store="new"} 2.0
"""
    m = Metrics.parse(text)
    assert m.quantile("shadowproxy_mirror_lag_seconds", 0.5) == pytest.approx(0.005)
    assert m.quantile("shadowproxy_mirror_lag_seconds", 0.95) == pytest.approx(0.03)
    assert m.mean("shadowproxy_mirror_lag_seconds") == pytest.approx(0.004)
    assert m.by_label("shadowproxy_statements_total", "kind") == {"read": 7.0, "write": 5.0}
    assert m.total("shadowproxy_statements_total", store="old") == 10.0
    assert Metrics.parse("").quantile("shadowproxy_mirror_lag_seconds", 0.5) is None
