"""The comparator's Prometheus metrics, in their own registry.

Exposed by ``--serve-metrics HOST:PORT`` (an HTTP server kept up after the run) or
written to ``--metrics-file`` in the text format a Pushgateway or the node exporter's
textfile collector reads.  The table label is bounded: the first 50 tables by name,
the rest as ``other``.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from comparator.report import KINDS, RunReport

MAX_TABLE_LABELS = 50

disable_created_metrics()  # as the proxy's: the *_created series add only noise

REGISTRY = CollectorRegistry(auto_describe=True)
RUNS = Counter(
    "shadowproxy_comparator_runs_total",
    "Comparator runs by result (identical, different, error).",
    ["result"],
    registry=REGISTRY,
)
LAST_RUN = Gauge(
    "shadowproxy_comparator_last_run_timestamp_seconds",
    "When the last comparator run finished (Unix time).",
    registry=REGISTRY,
)
LAST_DURATION = Gauge(
    "shadowproxy_comparator_last_run_duration_seconds",
    "Duration of the last comparator run.",
    registry=REGISTRY,
)
ROWS = Counter(
    "shadowproxy_comparator_rows_compared_total",
    "Rows compared, per table.",
    ["table"],
    registry=REGISTRY,
)
DIVERGENT = Gauge(
    "shadowproxy_comparator_divergent_rows",
    "Confirmed divergent rows found by the last run, per table and kind.",
    ["table", "kind"],
    registry=REGISTRY,
)
TRANSIENT = Counter(
    "shadowproxy_comparator_transient_rows_total",
    "Rows that differed while writes were in flight and converged on re-check.",
    ["table"],
    registry=REGISTRY,
)


def table_labels(names: list[str]) -> dict[str, str]:
    """Each table's label: its name for the first 50 by name, else ``other``."""
    ordered = sorted(set(names))
    keep = set(ordered[:MAX_TABLE_LABELS])
    return {n: n if n in keep else "other" for n in ordered}


def record_run(report: RunReport | None, duration: float, finished_at: float) -> None:
    """Account one run (``report`` None: the run failed)."""
    LAST_RUN.set(finished_at)
    LAST_DURATION.set(duration)
    if report is None:
        RUNS.labels("error").inc()
        return
    RUNS.labels("identical" if report.identical else "different").inc()
    labels = table_labels([t.name for t in report.tables])
    divergent: dict[tuple[str, str], int] = {}
    for t in report.tables:
        label = labels[t.name]
        ROWS.labels(label).inc(t.rows)
        if t.transient:
            TRANSIENT.labels(label).inc(t.transient)
        for kind in KINDS:
            divergent[(label, kind)] = divergent.get((label, kind), 0) + t.count(kind)
    DIVERGENT.clear()  # a gauge of the last run: tables compared before must not linger
    for (label, kind), n in divergent.items():
        DIVERGENT.labels(label, kind).set(n)


def write_textfile(path: Path) -> None:
    """Write the metrics atomically (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(generate_latest(REGISTRY))
    os.replace(tmp, path)
