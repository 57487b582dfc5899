"""The deployment recipes: YAML lint, Kubernetes schemas, compose, systemd, Dockerfile.

Nothing is built or started (no Docker here): each file is checked by the tool
that knows its format, and its content against what a migration needs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.observability.expressions import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
# Kinds whose schema kubernetes-validate does not have (CRDs, kustomize): checked here.
NOT_IN_SCHEMAS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Kustomization"}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def test_yamllint_on_every_yaml_file() -> None:
    files = [
        str(p.relative_to(ROOT))
        for pattern in ("*.yml", "*.yaml")
        for p in ROOT.rglob(pattern)
        if not p.relative_to(ROOT).parts[0].startswith(".")
    ]
    assert len(files) >= 10, files
    out = run(str(BIN / "yamllint"), "--strict", "-c", ".yamllint.yml", *files)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    # 1.29: the oldest release with native sidecars (init containers that keep running).
    for version in ("1.29.0", "1.37.0"):
        out = run(str(BIN / "kubernetes-validate"), "--strict", "-k", version, *files)
        assert out.returncode == 0, out.stdout + out.stderr
        for line in (out.stdout + out.stderr).splitlines():
            if "Couldn't find schema" in line:
                assert any(f"kind {kind} " in line for kind in NOT_IN_SCHEMAS), line
    kinds = {d["kind"] for d in manifests()}
    assert {
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "CronJob",
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds


def test_proxy_is_a_sidecar_with_probes_config_and_secret() -> None:
    [deployment] = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [proxy] = [c for c in pod["initContainers"] if c["name"] == "shadowproxy"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar
    assert pod["containers"], "the application container"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    admin = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert admin == {"admin": 9187}
    refs = {next(iter(r.values()))["name"] for r in proxy["envFrom"]}
    [config] = of_kind("ConfigMap")
    [secret] = of_kind("Secret")
    assert refs == {config["metadata"]["name"], secret["metadata"]["name"]}
    # Secrets live in the Secret, never in the ConfigMap.
    assert not {"SHADOW_OLD_DSN", "SHADOW_NEW_DSN", "SHADOW_ADMIN_TOKEN"} & set(config["data"])
    assert {"SHADOW_OLD_DSN", "SHADOW_NEW_DSN"} <= set(secret["stringData"])
    assert config["data"]["SHADOW_LISTEN"].startswith("127.0.0.1:")
    security = proxy["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [service] = of_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["admin"]


def test_monitors_select_the_sidecars_and_name_the_job_the_alerts_expect() -> None:
    [deployment] = of_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [pod_monitor] = of_kind("PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    [service_monitor] = of_kind("ServiceMonitor")
    [service] = of_kind("Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    [svc_endpoint] = service_monitor["spec"]["endpoints"]
    for ep in (endpoint, svc_endpoint):
        assert ep["port"] == "admin" and ep["path"] == "/metrics"
        job = [r for r in ep["relabelings"] if r["targetLabel"] == "job"]
        assert job == [{"targetLabel": "job", "replacement": "shadowproxy"}]


def test_comparator_cronjob_runs_compare_and_pushes_its_metrics() -> None:
    [cron] = of_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    assert "shadowproxy compare --metrics-file" in script
    assert "/metrics/job/shadowproxy-comparator" in script
    out = run("sh", "-n", "-c", container["args"][0])  # the shell script parses
    assert out.returncode == 0, out.stderr


def test_compose_has_every_service_of_a_local_trial() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yml").read_text())
    services = compose["services"]
    assert {"old-store", "new-store", "proxy", "comparator", "prometheus", "grafana"} <= set(
        services
    )
    proxy = services["proxy"]
    assert proxy["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / "compose" / proxy["build"]["context"] / "deploy" / "Dockerfile").is_file()
    env = proxy["environment"]
    assert "@old-store:" in env["SHADOW_OLD_DSN"] and "@new-store:" in env["SHADOW_NEW_DSN"]
    assert set(proxy["depends_on"]) == {"old-store", "new-store"}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):  # bind mounts point at files of this repository
                assert (DEPLOY / "compose" / source).exists(), volume
    out = run("sh", "-n", "-c", services["comparator"]["command"][0].replace("$$", "$"))
    assert out.returncode == 0, out.stderr


def test_compose_prometheus_config_is_valid_for_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make test` installs Debian's prometheus"
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "shadowproxy" in jobs  # the name ShadowproxyProxyDown expects
    # Inside the container the rules are mounted from grafana/alerts; here, point at them.
    config["rule_files"] = [str(ROOT / "grafana" / "alerts" / "shadowproxy.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    out = run(promtool, "check", "config", str(local))
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "shadowproxy.service").read_text()
    for option in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "StateDirectory=shadowproxy",
    ):
        assert f"\n{option}" in unit, option
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # not every CI image has systemd; the content checks above still ran
        return
    # verify insists that ExecStart exists: point it at this checkout's entry point.
    local = tmp_path / "shadowproxy.service"
    local.write_text(unit.replace("/opt/shadowproxy/bin/shadowproxy", str(BIN / "shadowproxy")))
    out = run(analyze, "verify", str(local), cwd=tmp_path)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert stages[-1].startswith("FROM python:") and "-slim" in stages[-1]
    assert "\nUSER 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    out = run(str(BIN / "hadolint"), "--failure-threshold", "warning", "deploy/Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr
