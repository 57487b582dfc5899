"""The alert rules: valid for promtool, unit-tested by promtool, documented, mirrored to Kubernetes.

promtool comes from Debian's ``prometheus`` package (``make test`` installs it);
without it these tests fail, they never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.observability.expressions import ALERT_FILE, README, ROOT, alert_rules

RULE_TESTS = sorted((ALERT_FILE.parent / "tests").glob("*.yml"))
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheus-rule.yaml"
RUNBOOK_BASE = "https://github.com/shadowproxy/shadowproxy#"

# What the issue asks to be paged for, and the alert that does it.
REQUIRED_ALERTS = {
    "ShadowproxyDivergence",
    "ShadowproxyMirrorLagHigh",
    "ShadowproxyJournalGrowing",
    "ShadowproxyStaleEpoch",
    "ShadowproxyControlStoreUnreachable",
    "ShadowproxyNewStoreErrors",
    "ShadowproxyShadowReadMismatchRate",
    "ShadowproxyProxyDown",
    "ShadowproxyComparatorDifferences",
    "ShadowproxySessionMoveFailing",
}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is not installed: `make test` installs Debian's prometheus package "
        "(apt-get install prometheus)"
    )
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_check_rules() -> None:
    out = run(promtool(), "check", "rules", str(ALERT_FILE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    assert RULE_TESTS, "no promtool unit tests in grafana/alerts/tests/"
    out = run(promtool(), "test", "rules", *map(str, RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    # Each alert has a case where it fires and a case where it stays silent.
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert fired == names, f"alerts never fired in a test: {names - fired}"
    assert silent == names, f"alerts never checked silent: {names - silent}"


def test_every_alert_is_labelled_and_points_to_a_runbook_anchor() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', README.read_text()))
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        url = notes["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), (name, url)
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"{name}: no README anchor for {url}"
    # The divergence page is immediate, whatever the kind.
    divergence = next(r for r in rules if r["alert"] == "ShadowproxyDivergence")
    assert divergence["for"] == "0m"
    assert "kind=" not in divergence["expr"]


def test_prometheus_rule_for_kubernetes_matches_the_rule_file() -> None:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(ALERT_FILE.read_text())["groups"]
