"""Builds the Grafana dashboards and the Prometheus Operator rule from one source.

    python grafana/build.py           # rewrite grafana/dashboards/*.json and the PrometheusRule
    python grafana/build.py --check   # exit 1 when a committed file differs from the build

Why a script rather than hand-written JSON: a Grafana dashboard is ~40 lines of
JSON per panel, almost all of it layout and boilerplate.  Here a panel is its
title, its PromQL and a description of what good and bad look like; the script
adds the grid positions, the datasource variable and the ``instance``/``table``
variables the same way on every panel, and the committed JSON stays what users
import (no Grafana SDK needed to use it).  The tests read the committed JSON.

The PrometheusRule for Kubernetes is built here too, from
grafana/alerts/shadowproxy.yml, so the two rule sets cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
ALERTS = ROOT / "grafana" / "alerts" / "shadowproxy.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheus-rule.yaml"

INST = 'instance=~"$instance"'
TABLE = 'table=~"$table"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False  # tables and stats of "now"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str  # what good and bad look like
    targets: tuple[Target, ...]
    kind: str = "timeseries"  # timeseries | stat | table
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str


def t(expr: str, legend: str = "", instant: bool = False) -> tuple[Target, ...]:
    return (Target(" ".join(expr.split()), legend, instant),)


def p99(metric: str, by: str, selector: str) -> str:
    return (
        f"histogram_quantile(0.99, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


def p50(metric: str, by: str, selector: str) -> str:
    return (
        f"histogram_quantile(0.5, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


# ----------------------------------------------------------------------- overview

OVERVIEW: list[Panel | Row] = [
    Panel(
        "Mode per instance",
        "The cutover mode each proxy runs (shadowproxy_mode_info == 1). Good: every "
        "instance shows the same mode, the one you set. Bad: instances disagree for more "
        "than a few seconds after a change (see the stale-epoch runbook).",
        t(
            f"max by (instance, mode) (shadowproxy_mode_info{{{INST}}} == 1)",
            "{{instance}}: {{mode}}",
            True,
        ),
        kind="stat",
        width=8,
        height=5,
        options={"textMode": "name", "colorMode": "none"},
    ),
    Panel(
        "Epoch per instance",
        "The epoch of the mode each proxy runs; every mode change bumps it. Good: one "
        "value across the fleet. Bad: an instance below the others (it missed a change).",
        t(f"max by (instance) (shadowproxy_mode_epoch{{{INST}}})", "{{instance}}", True),
        kind="stat",
        width=8,
        height=5,
    ),
    Panel(
        "Instances on a stale epoch",
        "Instances whose epoch is below the newest one of their job. Good: 0. Bad: "
        "anything above 0 for more than a minute.",
        t(
            f"count(shadowproxy_mode_epoch{{{INST}}} < on (job) group_left () "
            "max by (job) (shadowproxy_mode_epoch)) or vector(0)",
            "stale instances",
            True,
        ),
        kind="stat",
        width=8,
        height=5,
        options={"thresholds": [("green", None), ("red", 1)]},
    ),
    Panel(
        "Traffic by store and statement kind",
        "Statements per second, by the store that answered the client and by kind "
        "(read, write, txn, session, ddl). Good: the split matches the mode (reads on "
        "the read store, writes on the authoritative store). Bad: a sudden drop to 0 "
        "(clients no longer reach the proxy) or traffic on a store the mode does not use.",
        t(
            f"sum by (store, kind) (rate(shadowproxy_statements_total{{{INST}}}[{RATE}]))",
            "{{store}} {{kind}}",
        ),
        unit="ops",
        width=8,
    ),
    Panel(
        "Latency added by the proxy (p50, p99)",
        "How long the proxy holds a client's request before it reaches a store (parsing "
        "it, a commit waiting for the mirror store in sync consistency, a catalog read), "
        "per request round of a mirroring session. Good: p50 in microseconds, p99 near "
        "the mirror store's commit time. Bad: p99 in tens of milliseconds or climbing "
        "(every client request pays it; look at Lock-step wait and Mirror lag). A "
        "session that mirrors nothing adds no hold and is not counted here; the relay's "
        "own CPU per message (tens of microseconds) is measured by the benchmark "
        "(make bench), not here.",
        (
            Target(p50("shadowproxy_proxy_hold_seconds", "instance", INST), "p50 {{instance}}"),
            Target(p99("shadowproxy_proxy_hold_seconds", "instance", INST), "p99 {{instance}}"),
        ),
        unit="s",
        width=8,
    ),
    Panel(
        "Divergences by kind",
        "New divergences between the stores, by kind (rowcount, error, unmirrorable, "
        "read...). Good: flat at 0. Bad: any bar at all — each one is a statement the two "
        "stores answered differently; the divergence alert pages on it.",
        t(
            f"sum by (kind) (increase(shadowproxy_divergences_total{{{INST}}}[{RATE}]))",
            "{{kind}}",
        ),
        width=8,
        options={"bars": True},
    ),
    Panel(
        "Mirror lag (p50, p99)",
        "Time from the authoritative commit of a unit to its apply on the mirror store. "
        "Good: milliseconds. Bad: seconds and climbing (the new store is slow or "
        "overloaded); above 5 s for 5 minutes the mirror-lag alert fires.",
        (
            Target(p50("shadowproxy_mirror_lag_seconds", "instance", INST), "p50 {{instance}}"),
            Target(p99("shadowproxy_mirror_lag_seconds", "instance", INST), "p99 {{instance}}"),
        ),
        unit="s",
        width=8,
    ),
    Panel(
        "Mirror queue depth",
        "Units waiting in memory for the mirror. Good: near 0, short spikes under load. "
        "Bad: a steady climb (the mirror cannot keep up; past the bound units spill to "
        "the journal).",
        t(f"sum by (instance) (shadowproxy_mirror_queue_depth{{{INST}}})", "{{instance}}"),
        width=8,
    ),
    Panel(
        "Journal backlog",
        "Units in the durable journal not yet replayed on the mirror store. Good: 0. "
        "Bad: growing — the new store is unreachable or refusing writes; nothing is lost "
        "but the new store falls behind.",
        t(f"sum by (instance) (shadowproxy_journal_backlog_units{{{INST}}})", "{{instance}}"),
        width=8,
    ),
    Panel(
        "Shadow-read mismatch rate",
        "Share of compared shadow reads whose result differed between the stores. Good: "
        "0. Bad: above 0.1% (the gate to read-new stays closed and an alert fires).",
        # `or vector(0)`: the mismatch series exists only after a first mismatch; without
        # it a clean run would show "No data" instead of 0.
        t(
            f'(sum(rate(shadowproxy_shadow_reads_total{{{INST}, outcome="mismatch"}}[{RATE}])) '
            "or vector(0)) / "
            f'sum(rate(shadowproxy_shadow_reads_total{{{INST}, outcome=~"match|mismatch"}}[{RATE}]))',
            "mismatch ratio",
        ),
        unit="percentunit",
        width=8,
    ),
    Panel(
        "Comparator: divergent rows by table and kind",
        "Rows the last comparator run found missing, extra or mismatched in the new "
        "store, per table. Good: no bars. Bad: any row — repair before the next step.",
        t(
            f"max by (table, kind) (shadowproxy_comparator_divergent_rows{{{TABLE}}})",
            "{{table}} {{kind}}",
        ),
        width=8,
        options={"bars": True},
    ),
    Panel(
        "Client sessions open",
        "Application connections through the proxy. Good: steady, like the pool sizes "
        "of the applications. Bad: 0 (nobody reaches the proxy) or unbounded growth.",
        t(f"sum by (instance) (shadowproxy_client_sessions_open{{{INST}}})", "{{instance}}"),
        width=8,
    ),
    Panel(
        "Alerts firing",
        "shadowproxy alerts Prometheus is firing now (the ALERTS series). Good: empty. "
        "Bad: any row; each links to its runbook section in the README.",
        t('ALERTS{alertstate="firing", alertname=~"Shadowproxy.*"}', "", True),
        kind="table",
        width=24,
        height=6,
    ),
]

# ------------------------------------------------------------------------- detail

DETAIL: list[Panel | Row] = [
    Row("Stores"),
    Panel(
        "Upstream latency by store (p50, p99)",
        "Request to ReadyForQuery on the store that answered the client; for the mirror "
        "store, the time to apply one unit. Good: the new store close to the old one. "
        "Bad: the new store several times slower (it will be slower for the clients "
        "after read-new).",
        (
            Target(p50("shadowproxy_upstream_latency_seconds", "store", INST), "p50 {{store}}"),
            Target(p99("shadowproxy_upstream_latency_seconds", "store", INST), "p99 {{store}}"),
        ),
        unit="s",
    ),
    Panel(
        "Statement errors by store",
        "ErrorResponses each store returned to relayed client requests, per second. "
        "Good: the application's usual level on the old store, the same on the new. "
        "Bad: errors on the new store that the old store never had.",
        t(
            f"sum by (store) (rate(shadowproxy_statement_errors_total{{{INST}}}[{RATE}]))",
            "{{store}}",
        ),
        unit="ops",
    ),
    Panel(
        "Error ratio by store",
        "Errors divided by statements answered, per store. Good: equal on both stores. "
        "Bad: the new store above 1% (the new-store-errors alert).",
        t(
            f"sum by (store) (rate(shadowproxy_statement_errors_total{{{INST}}}[{RATE}])) / "
            f"sum by (store) (rate(shadowproxy_statements_total{{{INST}}}[{RATE}]))",
            "{{store}}",
        ),
        unit="percentunit",
    ),
    Panel(
        "Protocol and session errors",
        "Connections closed for a protocol violation (by side) and sessions ended by an "
        "unexpected proxy error. Good: 0. Bad: any, read the proxy log.",
        (
            Target(
                f"sum by (side) (rate(shadowproxy_protocol_errors_total{{{INST}}}[{RATE}]))",
                "protocol {{side}}",
            ),
            Target(
                f"sum(rate(shadowproxy_session_errors_total{{{INST}}}[{RATE}]))",
                "session errors",
            ),
        ),
        unit="ops",
    ),
    Row("Old vs new, per query fingerprint (shadow reads)"),
    Panel(
        "p99 latency per fingerprint and store",
        "The same queries timed on both stores by shadow reads (top-N fingerprints plus "
        "other). Good: the new store's line at or under the old one's. Bad: a "
        "fingerprint much slower on the new store (missing index, different plan).",
        t(
            p99(
                "shadowproxy_shadow_read_latency_seconds",
                "fingerprint, store",
                INST,
            ),
            "{{store}} {{fingerprint}}",
        ),
        unit="s",
        width=24,
    ),
    Panel(
        "Old / new p99 ratio per fingerprint",
        "p99 on the new store divided by p99 on the old store, now. Good: around 1 or "
        "below. Bad: above 2 for a frequent fingerprint.",
        t(
            p99("shadowproxy_shadow_read_latency_seconds", "fingerprint", f'{INST}, store="new"')
            + " / "
            + p99("shadowproxy_shadow_read_latency_seconds", "fingerprint", f'{INST}, store="old"'),
            "{{fingerprint}}",
            True,
        ),
        kind="table",
    ),
    Panel(
        "Shadow reads by outcome",
        "Shadow reads per second: match, mismatch, shed (skipped under load), error. "
        "Good: almost all match, few shed. Bad: any mismatch, or mostly shed (the "
        "comparison sees too little traffic to gate on).",
        t(
            f"sum by (outcome) (rate(shadowproxy_shadow_reads_total{{{INST}}}[{RATE}]))",
            "{{outcome}}",
        ),
        unit="ops",
    ),
    Row("Mirror internals"),
    Panel(
        "Mirror throughput",
        "Units and statements applied on the mirror store per second. Good: follows the "
        "write traffic of the authoritative store. Bad: 0 while writes flow.",
        (
            Target(
                f"sum by (instance) (rate(shadowproxy_mirror_applied_units_total{{{INST}}}[{RATE}]))",
                "units {{instance}}",
            ),
            Target(
                f"sum by (instance) (rate(shadowproxy_mirror_statements_total{{{INST}}}[{RATE}]))",
                "statements {{instance}}",
            ),
        ),
        unit="ops",
        width=8,
    ),
    Panel(
        "Mirror failures by reason",
        "Units not applied live, by reason (connect, lost, overflow, journaling, "
        "shutdown, rejected). Good: 0. Bad: connect/lost (new store unreachable), "
        "overflow (backlog bound reached), rejected (the new store refused a write).",
        t(
            f"sum by (reason) (rate(shadowproxy_mirror_failures_total{{{INST}}}[{RATE}]))",
            "{{reason}}",
        ),
        unit="ops",
        width=8,
    ),
    Panel(
        "Mirror lag p99 per instance",
        "Authoritative commit to mirror apply. Good: well under a second. Bad: above 5 s "
        "for minutes (alert).",
        t(p99("shadowproxy_mirror_lag_seconds", "instance", INST), "{{instance}}"),
        unit="s",
        width=8,
    ),
    Panel(
        "Lock-step wait (sync consistency)",
        "In sync consistency, how long a commit waited for the mirror store to apply its "
        "transaction (p50, p99). Good: close to the new store's own commit time. Bad: "
        "tens of milliseconds and more; every client write pays it.",
        (
            Target(
                p50("shadowproxy_mirror_sync_wait_seconds", "instance", INST), "p50 {{instance}}"
            ),
            Target(
                p99("shadowproxy_mirror_sync_wait_seconds", "instance", INST), "p99 {{instance}}"
            ),
        ),
        unit="s",
        width=12,
    ),
    Panel(
        "Lock-step fallbacks by reason",
        "Transactions mirrored after their commit instead of in lock-step, by reason "
        "(timeout, journal, ...). Good: 0. Bad: a steady rate; those transactions lose "
        "the cross-session ordering guarantee and the comparator must check them.",
        t(
            f"sum by (reason) (rate(shadowproxy_mirror_sync_fallbacks_total{{{INST}}}[{RATE}]))",
            "{{reason}}",
        ),
        unit="ops",
        width=12,
    ),
    Panel(
        "Journal: appended and replayed",
        "Units written to and replayed from the durable journal per second. Good: both "
        "0, or replay catching up after an outage. Bad: appends without replays.",
        (
            Target(
                f"sum(rate(shadowproxy_journal_appended_units_total{{{INST}}}[{RATE}]))",
                "appended",
            ),
            Target(
                f"sum(rate(shadowproxy_journal_replayed_units_total{{{INST}}}[{RATE}]))",
                "replayed",
            ),
        ),
        unit="ops",
        width=8,
    ),
    Panel(
        "Journal backlog and mirror queue",
        "Units waiting, in the journal and in memory. Good: both near 0, and no units "
        "held. Bad: either growing for minutes; any unit held (the journal cannot be "
        "written, writing sessions pause past the queue bounds).",
        (
            Target(f"sum(shadowproxy_journal_backlog_units{{{INST}}})", "journal"),
            Target(f"sum(shadowproxy_mirror_queue_depth{{{INST}}})", "queue"),
            Target(f"sum(shadowproxy_journal_held_units{{{INST}}})", "held (journal unwritable)"),
        ),
        width=8,
    ),
    Panel(
        "Divergences by kind (total)",
        "Divergences counted since each proxy started, by kind. Good: none. Bad: any; "
        "compare with the divergence log and /status.",
        t(f"sum by (kind) (shadowproxy_divergences_total{{{INST}}})", "{{kind}}", True),
        kind="stat",
        width=8,
    ),
    Row("Control plane"),
    Panel(
        "Control store reachable",
        "1 when the instance reaches the control store. Good: 1 everywhere. Bad: 0 — "
        "the instance keeps its last known mode (fail static) and misses changes.",
        t(f"min by (instance) (shadowproxy_control_store_up{{{INST}}})", "{{instance}}"),
        width=8,
    ),
    Panel(
        "Heartbeat age",
        "Seconds since each instance last wrote its heartbeat (epoch it runs) to the "
        "control store. Good: a few seconds. Bad: growing (the instance cannot write).",
        t(
            f"time() - max by (instance) "
            f"(shadowproxy_control_last_heartbeat_timestamp_seconds{{{INST}}})",
            "{{instance}}",
        ),
        unit="s",
        width=8,
    ),
    Panel(
        "Mode changes",
        "Mode changes applied by each instance. Good: only the ones you made. Bad: "
        "changes nobody planned (read the audit trail).",
        t(
            f"sum by (instance) (increase(shadowproxy_mode_changes_total{{{INST}}}[{RATE}]))",
            "{{instance}}",
        ),
        width=8,
        options={"bars": True},
    ),
    Row("Cutover: sessions and reads between the stores"),
    Panel(
        "Sessions moved between stores",
        "Sessions that moved their writes to the other store in place (write-new, and "
        "back on a revert), by the store they moved to and outcome. Good: one burst of "
        "moved right after each mode change, as many as the sessions open, then nothing. "
        "Bad: failed, or moves nobody asked for; a failed session stays on its store "
        "and retries at its next transaction boundary (the session-move alert).",
        # A store/outcome series is born with its first move, which increase() cannot
        # see (no earlier sample): a series younger than the interval counts whole.
        t(
            "sum by (store, outcome) ("
            f"(shadowproxy_authority_switches_total{{{INST}}} unless "
            f"shadowproxy_authority_switches_total{{{INST}}} offset {RATE}) "
            f"or increase(shadowproxy_authority_switches_total{{{INST}}}[{RATE}]))",
            "{{store}} {{outcome}}",
        ),
        width=8,
        options={"bars": True},
    ),
    Panel(
        "Session move wait (p50, p99)",
        "How long a session's next request waited while the session moved its writes "
        "(quiesce, sequences, state replay, new connection). Good: a fraction of a "
        "second, once per mode change (about 0.1 s on an idle test machine). Bad: "
        "seconds (a long transaction keeps the other sessions waiting, or the mirror "
        "feeding the target store has not caught up; past SHADOW_AUTHORITY_SWITCH_TIMEOUT "
        "the move fails).",
        (
            Target(
                p50("shadowproxy_authority_switch_seconds", "instance", INST),
                "p50 {{instance}}",
            ),
            Target(
                p99("shadowproxy_authority_switch_seconds", "instance", INST),
                "p99 {{instance}}",
            ),
        ),
        unit="s",
        width=8,
    ),
    Panel(
        "Reads routed away from the read store",
        "In read-new, autocommit reads that should have gone to the new store but the "
        "old store served, by reason: read_your_writes (the session's own writes had "
        "not reached the new store in time), unavailable, prepare (the new store "
        "refused the session's settings or statements). Good: 0 or a trickle. Bad: a "
        "steady rate; those reads never tested the new store (check mirror lag and the "
        "new store's errors before going on).",
        t(
            f"sum by (reason) (rate(shadowproxy_read_route_fallbacks_total{{{INST}}}[{RATE}]))",
            "{{reason}}",
        ),
        unit="ops",
        width=8,
    ),
    Row("Comparator"),
    Panel(
        "Comparator runs by result",
        "Runs that ended identical, different or in error. Good: identical. Bad: "
        "different (see the divergent rows) or error (the run did not finish).",
        t(
            "sum by (result) (increase(shadowproxy_comparator_runs_total[1d]))",
            "{{result}}",
            True,
        ),
        kind="stat",
        width=8,
    ),
    Panel(
        "Last comparator run: age and duration",
        "Seconds since the last run finished, and how long it took. Good: age under the "
        "schedule period. Bad: older than 3 hours (alert), or a duration that keeps "
        "growing.",
        (
            Target("time() - max(shadowproxy_comparator_last_run_timestamp_seconds)", "age", True),
            Target("max(shadowproxy_comparator_last_run_duration_seconds)", "duration", True),
        ),
        kind="stat",
        unit="s",
        width=8,
    ),
    Panel(
        "Rows compared per table",
        "Rows per second the comparator reads per table. Good: every table is covered. "
        "Bad: a table missing from the list.",
        t(
            f"sum by (table) (rate(shadowproxy_comparator_rows_compared_total{{{TABLE}}}[{RATE}]))",
            "{{table}}",
        ),
        unit="ops",
        width=8,
    ),
    Panel(
        "Divergent rows by table and kind",
        "missing / extra / mismatched rows found by the last run. Good: 0. Bad: any — "
        "repair from the authoritative side, then run again.",
        t(
            f"max by (table, kind) (shadowproxy_comparator_divergent_rows{{{TABLE}}})",
            "{{table}} {{kind}}",
        ),
        width=12,
    ),
    Panel(
        "Transient rows per table",
        "Rows that differed on the first look and agreed on the re-check (writes in "
        "flight). Good: small and steady. Bad: large and growing (the comparator cannot "
        "settle; slow the writes or compare off-peak).",
        t(
            f"sum by (table) (increase(shadowproxy_comparator_transient_rows_total{{{TABLE}}}[1h]))",
            "{{table}}",
        ),
        width=12,
    ),
]


# ------------------------------------------------------------------------ builder


def _variables() -> list[dict[str, Any]]:
    ds = {"type": "prometheus", "uid": "${datasource}"}

    def query_var(name: str, label: str, metric: str) -> dict[str, Any]:
        query = f"label_values({metric}, {label})"
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": ds,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-values"},
            "refresh": 2,  # on time range change
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
        },
        query_var("instance", "instance", "shadowproxy_mode_epoch"),
        query_var("table", "table", "shadowproxy_comparator_rows_compared_total"),
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    targets = [
        {
            "datasource": ds,
            "expr": target.expr,
            "legendFormat": target.legend or "__auto",
            "instant": target.instant,
            "range": not target.instant,
            "format": "table" if panel.kind == "table" else "time_series",
            "refId": chr(ord("A") + i),
        }
        for i, target in enumerate(panel.targets)
    ]
    steps = [
        {"color": color, "value": value}
        for color, value in panel.options.get("thresholds", [("green", None)])
    ]
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "bars" if panel.options.get("bars") else "line", "fillOpacity": 10}
    options: dict[str, Any] = {}
    if panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": panel.options.get("textMode", "value_and_name"),
            "colorMode": panel.options.get("colorMode", "value"),
        }
    elif panel.kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": ds,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": custom,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": options,
        "targets": targets,
    }


def _layout(items: list[Panel | Row]) -> list[dict[str, Any]]:
    """Grid positions: panels fill 24-unit rows left to right."""
    out: list[dict[str, Any]] = []
    x = y = row_height = 0
    for pid, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += row_height
            x = row_height = 0
            out.append(
                {
                    "id": pid,
                    "type": "row",
                    "title": item.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            y += row_height
            x = row_height = 0
        out.append(_panel_json(item, pid, x, y))
        x += item.width
        row_height = max(row_height, item.height)
    return out


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["shadowproxy", "migration"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "links": [
            {
                "title": "shadowproxy dashboards",
                "type": "dashboards",
                "tags": ["shadowproxy"],
                "asDropdown": False,
            }
        ],
        "panels": _layout(items),
    }


def build_dashboards() -> dict[Path, str]:
    boards = {
        "shadowproxy-overview": dashboard(
            "shadowproxy-overview",
            "shadowproxy / overview",
            "Mode, epochs, traffic, latency added by the proxy, divergences, mirror lag "
            "and journal of the migration.",
            OVERVIEW,
        ),
        "shadowproxy-detail": dashboard(
            "shadowproxy-detail",
            "shadowproxy / detail",
            "Per-store latency and errors, per-fingerprint old/new latency, mirror "
            "internals, control plane, session moves and read routing, comparator.",
            DETAIL,
        ),
    }
    return {
        DASHBOARDS / f"{name}.json": json.dumps(board, indent=2) + "\n"
        for name, board in boards.items()
    }


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as block literals; lists indented (yamllint's default)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def build_prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "shadowproxy",
            "labels": {"app.kubernetes.io/name": "shadowproxy", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }
    header = (
        "# Generated by `python grafana/build.py` from grafana/alerts/shadowproxy.yml:\n"
        "# edit the rules there, then rebuild (a test fails when they differ).\n"
    )
    body = yaml.dump(rule, Dumper=_LiteralDumper, sort_keys=False, width=100)
    return header + body


def build_all() -> dict[Path, str]:
    files = build_dashboards()
    files[PROMETHEUS_RULE] = build_prometheus_rule()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python grafana/build.py")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in build_all().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} is stale: run python grafana/build.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
