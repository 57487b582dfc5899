"""The Grafana dashboards and provisioning files, checked as Grafana will load them.

(Whether every expression parses and returns data is the live test's job:
tests/observability/test_live_prometheus.py.)
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.observability.expressions import ROOT, dashboard_expressions, dashboards, panels

PROVISIONING = ROOT / "grafana" / "provisioning"


def test_committed_dashboards_and_rule_are_what_the_builder_makes() -> None:
    out = subprocess.run(
        [sys.executable, "grafana/build.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_overview_and_detail_exist_with_instance_and_table_variables() -> None:
    boards = dashboards()
    assert set(boards) == {"shadowproxy-overview", "shadowproxy-detail"}
    for name, board in boards.items():
        assert board["uid"] == name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"datasource", "instance", "table"} <= set(variables), name
        for var in ("instance", "table"):
            assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*"


def test_every_panel_says_what_good_and_bad_look_like() -> None:
    for name, board in dashboards().items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(board):
            where = f"{name} / {panel['title']}"
            text = panel.get("description", "")
            assert "Good" in text and "Bad" in text, where
            assert panel["targets"], where
            assert panel["datasource"]["uid"] == "${datasource}", where
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where


def test_panels_scope_proxy_series_to_the_instance_variable() -> None:
    for e in dashboard_expressions():
        proxy_series = {
            m for m in e.metrics() if m.startswith("shadowproxy_") and "comparator" not in m
        }
        if proxy_series and "$" not in e.origin:  # variables list all instances
            assert 'instance=~".*"' in e.expr, e.origin


def test_overview_shows_what_the_issue_asks_for() -> None:
    overview = " ".join(
        t["expr"] for p in panels(dashboards()["shadowproxy-overview"]) for t in p["targets"]
    )
    for needle in (
        "shadowproxy_mode_info",
        "shadowproxy_mode_epoch",
        "shadowproxy_statements_total",
        "shadowproxy_proxy_hold_seconds_bucket",
        "shadowproxy_divergences_total",
        "shadowproxy_mirror_lag_seconds_bucket",
        "shadowproxy_journal_backlog_units",
        "shadowproxy_shadow_reads_total",
        "shadowproxy_comparator_divergent_rows",
        "ALERTS",
    ):
        assert needle in overview, needle


def test_detail_shows_stores_fingerprints_mirror_cutover_and_comparator() -> None:
    detail = " ".join(
        t["expr"] for p in panels(dashboards()["shadowproxy-detail"]) for t in p["targets"]
    )
    for needle in (
        "shadowproxy_upstream_latency_seconds_bucket",
        "shadowproxy_statement_errors_total",
        "shadowproxy_shadow_read_latency_seconds_bucket",
        "shadowproxy_mirror_failures_total",
        "shadowproxy_comparator_runs_total",
        "shadowproxy_comparator_rows_compared_total",
        "shadowproxy_comparator_transient_rows_total",
        "shadowproxy_control_store_up",
        "shadowproxy_authority_switches_total",
        "shadowproxy_authority_switch_seconds_bucket",
        "shadowproxy_read_route_fallbacks_total",
    ):
        assert needle in detail, needle


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    [datasources] = PROVISIONING.glob("datasources/*.yml")
    [source] = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    [providers] = PROVISIONING.glob("dashboards/*.yml")
    [provider] = yaml.safe_load(providers.read_text())["providers"]
    assert provider["type"] == "file"
    # compose mounts grafana/dashboards at the provider's path.
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(
        m.startswith("../../grafana/dashboards:") and m.split(":")[1] == provider["options"]["path"]
        for m in mounts
    ), mounts
