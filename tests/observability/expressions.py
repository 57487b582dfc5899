"""Every PromQL expression the project ships: dashboard panels, variables, alert rules.

Read from the committed files (what users import), never from the builder, so
the tests check exactly what Grafana and Prometheus will load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
ALERT_FILE = ROOT / "grafana" / "alerts" / "shadowproxy.yml"
README = ROOT / "README.md"

# What Grafana puts in place of its variables when everything is selected.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$instance": ".*",
    "$table": ".*",
}
_METRIC = re.compile(r"\b(shadowproxy_[a-z0-9_]+|ALERTS|up)\b")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)$")


@dataclass(frozen=True)
class Expression:
    origin: str  # "dashboard overview / Panel title [A]" or "alert Name"
    expr: str  # ready for Prometheus (Grafana variables substituted)

    def metrics(self) -> set[str]:
        """Metric (sample) names the expression reads."""
        return set(_METRIC.findall(self.expr))


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def substitute(expr: str) -> str:
    # Longest first: $__rate_interval before $__range and $__interval.
    for name in sorted(GRAFANA_SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_SUBSTITUTIONS[name])
    return expr


def variable_query(query: str) -> str:
    """Grafana's ``label_values(metric, label)`` as the PromQL that answers it."""
    found = _LABEL_VALUES.match(query.strip())
    assert found, f"unsupported variable query {query!r}"
    metric, label = found.groups()
    return f"count by ({label}) ({metric})"


def dashboard_expressions() -> list[Expression]:
    out: list[Expression] = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel["targets"]:
                origin = f"dashboard {name} / {panel['title']} [{target['refId']}]"
                out.append(Expression(origin, substitute(target["expr"])))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append(Expression(f"dashboard {name} / ${var['name']}", variable_query(query)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_expressions() -> list[Expression]:
    return [Expression(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
