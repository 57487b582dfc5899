"""Every dashboard and alert expression, evaluated by a real Prometheus scraping a real proxy.

A throwaway ``prometheus`` (Debian's package) scrapes a dual-write proxy and a
comparator every second and evaluates the alert rules every second.  A
workload runs through the proxy, with one divergence planted (a row only the
new store has, so an UPDATE touches a different number of rows there); then
``shadowproxy compare`` runs and serves its metrics.  Every PromQL expression
of every dashboard panel, dashboard variable and alert goes through
``/api/v1/query``: each must parse, and each must return data when every
series it reads is one the proxy or the comparator exports right now.  Series
nobody exports yet (shadow reads, for instance) only have to parse.  The
divergence and comparator alerts must fire, every other alert must stay
silent, and the proxy's JSON log must hold the divergence as its own record.

Then the proxy walks shadow-read -> read-new -> write-new -> dual-write with
one session open throughout (it moves its writes to the new store and back), and the
panels about the cutover are checked with that data: sessions moved, the
move wait, the latency added by the proxy, reads answered by the new store,
the mode; every other alert still stays silent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHADOWPROXY, PgPair, ProxyProcess, free_port, pg_dsn
from tests.integration.test_mode_switch_session import TOKEN, set_mode
from tests.observability.expressions import (
    ALERT_FILE,
    Expression,
    alert_expressions,
    dashboard_expressions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: shadowproxy
    static_configs:
      - targets: ['127.0.0.1:{admin_port}']
  - job_name: shadowproxy-comparator
    static_configs:
      - targets: ['127.0.0.1:{comparator_port}']
"""


class Prometheus:
    """A prometheus process on a free loopback port; stopped by its own pid."""

    def __init__(self, workdir: Path, admin_port: int, comparator_port: int) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: run `make test` (it installs it with apt)"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            SCRAPE_CONFIG.format(
                rules=ALERT_FILE, admin_port=admin_port, comparator_port=comparator_port
            )
        )
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:  # 400 for a bad expression, with a JSON body
            return dict(json.loads(exc.read()))

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"prometheus not ready: {self.log_path.read_text()}")

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def json_proxy(pg_pair: PgPair, proxy_factory: Any) -> ProxyProcess:
    pg_pair.run_both("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
    # The planted divergence: a row only the new store has.
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute("INSERT INTO items VALUES (100000, 0)")
    proxy: ProxyProcess = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), log_format="json", admin_token=TOKEN
    )
    return proxy


@pytest.fixture
def comparator_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(
    tmp_path: Path, json_proxy: ProxyProcess, comparator_port: int
) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path, json_proxy.admin_port, comparator_port)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def run_workload(proxy: ProxyProcess, db: str, seconds: float, n: int = 0) -> int:
    """Reads, writes and transactions through the proxy, spread over ``seconds``.

    Inserts ids from ``n + 1`` on and returns the last one.
    """
    deadline = time.monotonic() + seconds
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        while time.monotonic() < deadline:
            n += 1
            conn.execute("INSERT INTO items VALUES (%s, %s)", (n, n))
            conn.execute("SELECT count(*) FROM items WHERE v > %s", (n // 2,)).fetchone()
            with conn.transaction():
                conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", (n,))
            time.sleep(0.02)
    return n


@contextmanager
def comparator(pair: PgPair, port: int, workdir: Path) -> Iterator[None]:
    """``shadowproxy compare`` between the two stores, serving its metrics after the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    proc = subprocess.Popen(
        [
            SHADOWPROXY,
            "compare",
            f"--old={pg_dsn(pair.old)}",
            f"--new={pg_dsn(pair.new)}",
            f"--serve-metrics=127.0.0.1:{port}",
            "--serve-seconds=60",
            "--settle-seconds=0.2",
            f"--checkpoint={workdir / 'compare-checkpoint'}",
            f"--divergence-log={workdir / 'compare-divergences.jsonl'}",
        ],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "compare.log").open("wb"),
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exported_samples(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read()
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def wait_for(prom: Prometheus, expr: str, timeout: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    result: list[Any] = []
    while time.monotonic() < deadline:
        answer = prom.query(expr)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr} returned no data within {timeout}s")


def check_panel(prom: Prometheus, e: Expression, live: set[str]) -> str | None:
    """None when the expression is fine, else what is wrong with it."""
    answer = prom.query(e.expr)
    if answer.get("status") != "success":
        return f"{e.origin}: does not parse/evaluate: {answer.get('error')}\n  {e.expr}"
    if e.metrics() <= live and not answer["data"]["result"]:
        return f"{e.origin}: no data although these are exported: {sorted(e.metrics())}\n  {e.expr}"
    return None


def test_every_dashboard_and_alert_expression_on_live_prometheus(
    tmp_path: Path,
    pg_pair: PgPair,
    json_proxy: ProxyProcess,
    prometheus: Prometheus,
    comparator_port: int,
) -> None:
    wait_for(prometheus, 'up{job="shadowproxy"} == 1')
    last = run_workload(json_proxy, pg_pair.old, 3.0)
    with psycopg.connect(json_proxy.dsn(pg_pair.old), autocommit=True) as conn:
        conn.execute("UPDATE items SET v = v + 1")  # the new store has one row more
    run_workload(json_proxy, pg_pair.old, 2.0, last)
    json_proxy.wait_mirror_idle()

    # The proxy saw it (checked in its own divergence log) ...
    assert [e["kind"] for e in json_proxy.divergences()] == ["rowcount"]
    # ... and Prometheus pages on it.
    firing = wait_for(prometheus, 'ALERTS{alertname="ShadowproxyDivergence", alertstate="firing"}')
    assert firing[0]["metric"]["kind"] == "rowcount"
    assert firing[0]["metric"]["severity"] == "critical"

    with comparator(pg_pair, comparator_port, tmp_path):
        # The comparator finds the planted row, and Prometheus pages on that too.
        found = wait_for(
            prometheus,
            'ALERTS{alertname="ShadowproxyComparatorDifferences", alertstate="firing"}',
            timeout=40,
        )
        assert [(a["metric"]["table"], a["metric"]["kind"]) for a in found] == [("items", "extra")]
        time.sleep(1.5)  # one more scrape of both after the last statement
        live = (
            exported_samples(json_proxy.admin_port)
            | exported_samples(comparator_port)
            | {"ALERTS", "up"}
        )
        check_panels(prometheus, live)
        check_alerts(prometheus)

    # The rule file loaded whole: every alert of the file is known to Prometheus.
    rules = prometheus.get("/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"]}
    assert loaded == {e.origin.removeprefix("alert ") for e in alert_expressions()}
    check_json_log(json_proxy)

    # The cutover steps, with the session moves they make, on the same proxy.
    walk_the_ladder(json_proxy, pg_pair.old, prometheus, last + 10_000)
    time.sleep(2.5)  # two more scrapes after the last move
    live = exported_samples(json_proxy.admin_port) | {"ALERTS", "up"}
    assert {
        "shadowproxy_authority_switches_total",
        "shadowproxy_authority_switch_seconds_bucket",
        "shadowproxy_proxy_hold_seconds_bucket",
    } <= live
    check_cutover_panels(prometheus, live)
    check_alerts(prometheus)  # the moves succeeded: the session-move alert is silent
    # Reads and writes on the new store matched the old one all along.
    assert [e["kind"] for e in json_proxy.divergences()] == ["rowcount"]


def check_panels(prometheus: Prometheus, live: set[str]) -> None:
    panels = dashboard_expressions()
    problems = [p for e in panels if (p := check_panel(prometheus, e, live)) is not None]
    assert not problems, "\n".join(problems)
    # The workload made the core panels meaningful, not just non-empty.
    assert {"shadowproxy_statements_total", "shadowproxy_mirror_lag_seconds_bucket"} <= live
    assert "shadowproxy_comparator_divergent_rows" in live
    data_checked = [e for e in panels if e.metrics() <= live]
    assert len(data_checked) >= 30, [e.origin for e in data_checked]

    # The panels show what happened, not just something.
    def result(origin: str) -> list[Any]:
        answer = prometheus.query(next(e.expr for e in panels if e.origin == origin))
        return list(answer["data"]["result"])

    mode = result("dashboard shadowproxy-overview / Mode per instance [A]")
    assert [r["metric"]["mode"] for r in mode] == ["dual-write"]
    totals = result("dashboard shadowproxy-detail / Divergences by kind (total) [A]")
    assert [(r["metric"]["kind"], r["value"][1]) for r in totals] == [("rowcount", "1")]
    rows = result(
        "dashboard shadowproxy-overview / Comparator: divergent rows by table and kind [A]"
    )
    assert {(r["metric"]["kind"], r["value"][1]) for r in rows} == {
        ("missing", "0"),
        ("extra", "1"),
        ("mismatched", "0"),
    }


def check_alerts(prometheus: Prometheus) -> None:
    """Each alert expression parses; only the two planted problems fire."""
    expected = {"alert ShadowproxyDivergence", "alert ShadowproxyComparatorDifferences"}
    for e in alert_expressions():
        answer = prometheus.query(e.expr)
        assert answer.get("status") == "success", (e.origin, answer.get("error"))
        fires = bool(answer["data"]["result"])
        assert fires == (e.origin in expected), (e.origin, answer)


def check_json_log(proxy: ProxyProcess) -> None:
    """The divergence is its own structured record in the proxy's JSON log."""
    records = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    divergence = [r for r in records if r.get("event") == "divergence"]
    assert len(divergence) == 1, records
    record = divergence[0]
    assert record["level"] == "WARNING" and record["kind"] == "rowcount"
    assert record["logger"] == "proxy.mirror.divergence"
    assert record["fingerprint"].lower().startswith("update items set")
    assert "session" in record and record["ts"].endswith("Z")


def panel_result(prometheus: Prometheus, origin: str) -> list[Any]:
    expr = next(e.expr for e in dashboard_expressions() if e.origin == origin)
    answer = prometheus.query(expr)
    assert answer["status"] == "success", (origin, answer)
    return list(answer["data"]["result"])


def wait_for_mode(prometheus: Prometheus, mode: str, timeout: float = 10.0) -> None:
    """The Mode per instance panel shows ``mode`` (after the next scrape)."""
    origin = "dashboard shadowproxy-overview / Mode per instance [A]"
    deadline = time.monotonic() + timeout
    shown: list[str] = []
    while time.monotonic() < deadline:
        shown = [r["metric"]["mode"] for r in panel_result(prometheus, origin)]
        if shown == [mode]:
            return
        time.sleep(0.2)
    raise AssertionError(f"Mode per instance shows {shown}, not {mode}")


# Forward one step at a time (force skips the gates, not the steps); back in one jump.
LADDER = (
    ("shadow-read", "old", 0.5),
    ("read-new", "old", 1.5),
    ("write-new", "new", 1.5),
    ("dual-write", "old", 1.0),
)


def walk_the_ladder(proxy: ProxyProcess, db: str, prometheus: Prometheus, n: int) -> None:
    """Up to write-new and back to dual-write: autocommit writes and reads of the rows
    just written (never the planted row, so the stores agree on every read), from
    one session that stays open and moves its writes to the new store and back."""
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        for mode, store, seconds in LADDER:
            set_mode(proxy, mode)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                n += 1
                conn.execute("INSERT INTO items VALUES (%s, %s)", (n, n))
                row = conn.execute("SELECT v FROM items WHERE id = %s", (n,)).fetchone()
                assert row == (n,), (mode, row)
                time.sleep(0.02)
            # The session writes first on the store the mode makes authoritative.
            assert proxy.status()["sessions_by_store"][store] == 1, (mode, proxy.status())
            wait_for_mode(prometheus, mode)


def check_cutover_panels(prometheus: Prometheus, live: set[str]) -> None:
    """Every panel still answers, and the cutover panels show what the ladder did."""
    panels = dashboard_expressions()
    problems = [
        p
        for e in panels
        if "comparator" not in e.expr  # the comparator stopped: its series went stale
        and (p := check_panel(prometheus, e, live)) is not None
    ]
    assert not problems, "\n".join(problems)

    def values(origin: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in panel_result(prometheus, origin)
        }

    detail, overview = "dashboard shadowproxy-detail / ", "dashboard shadowproxy-overview / "
    # The open session moved to new (write-new) and back to old (dual-write), no failure.
    moved = values(detail + "Sessions moved between stores [A]", "store", "outcome")
    assert set(moved) == {("new", "moved"), ("old", "moved")}, moved
    assert all(v > 0 for v in moved.values()), moved
    for ref in "AB":
        [wait] = values(detail + f"Session move wait (p50, p99) [{ref}]").values()
        assert 0 < wait < 10, wait  # a real duration, not NaN
        [hold] = values(overview + f"Latency added by the proxy (p50, p99) [{ref}]").values()
        assert 0 < hold < 10, hold
    # read-new answered the reads from the new store, write-new everything.
    traffic = values(overview + "Traffic by store and statement kind [A]", "store", "kind")
    assert traffic.get(("new", "read"), 0) > 0 and traffic.get(("new", "write"), 0) > 0, traffic
    wait_for_mode(prometheus, "dual-write")
