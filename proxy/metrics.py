"""Every Prometheus metric of the proxy, defined once.

Labels are bounded: statement kind, store, divergence kind, failure reason.
No label ever carries a literal from a query or a credential.  The relay binds
label children once (see ``bound``) so the hot path does a plain ``inc()``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# The *_created series of every counter add noise and nothing an SRE reads.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

CLIENT_SESSIONS = Gauge(
    "shadowproxy_client_sessions_open", "Client sessions currently open.", registry=REGISTRY
)
CLIENT_SESSIONS_TOTAL = Counter(
    "shadowproxy_client_sessions_accepted_total", "Client sessions accepted.", registry=REGISTRY
)


class _HotChild:
    """One label set of a hot-path metric: plain Python numbers, no lock.

    The relay runs on one event loop thread, so ``inc``/``observe`` need no
    lock; prometheus_client's own children take a mutex per call, which the
    profiler showed at several microseconds per transaction.
    """

    __slots__ = ("value", "counts", "sum", "_bounds")

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.value = 0.0
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self._bounds, seconds)] += 1
        self.sum += seconds


class _HotMetric(Collector):
    """A counter or histogram family for the hot path, exported like any other."""

    def __init__(
        self, name: str, doc: str, labels: list[str], kind: str, buckets: tuple[float, ...] = ()
    ) -> None:
        self.name, self.doc, self.label_names, self.kind = name, doc, labels, kind
        self.buckets = tuple(sorted(buckets))
        self.children: dict[tuple[str, ...], _HotChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> _HotChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _HotChild(self.buckets)
        return child

    def collect(self) -> Iterable[Metric]:
        if self.kind == "counter" or self.kind == "gauge":
            family: Metric = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
                self.name, self.doc, labels=self.label_names
            )
            for values, child in list(self.children.items()):
                family.add_metric(list(values), child.value)  # type: ignore[attr-defined]
        else:
            family = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
            for values, child in list(self.children.items()):
                cumulative, acc = [], 0
                for bound, n in zip((*self.buckets, float("inf")), child.counts, strict=True):
                    acc += n
                    cumulative.append((floatToGoString(bound), acc))
                family.add_metric(list(values), cumulative, child.sum)  # type: ignore[attr-defined]
        return [family]

    def describe(self) -> Iterable[Metric]:
        return []


STATEMENTS = _HotMetric(
    "shadowproxy_statements",
    "Statements relayed, by statement kind and by the store that answered the client.",
    ["kind", "store"],
    "counter",
)
UPSTREAM_LATENCY = _HotMetric(
    "shadowproxy_upstream_latency_seconds",
    "Time from forwarding a request (Query or Sync) to the store's ReadyForQuery; "
    "for the mirror store, the time to apply one unit.",
    ["store"],
    "histogram",
    _LATENCY_BUCKETS,
)
PROXY_HOLD = _HotMetric(
    "shadowproxy_proxy_hold_seconds",
    "Latency the proxy adds by holding a client's request before it reaches a store "
    "(parse, commit waiting for the mirror, catalog read), per request round of a "
    "mirroring session.  A session that mirrors nothing holds nothing: its bytes are "
    "forwarded as they arrive.",
    [],
    "histogram",
    _LATENCY_BUCKETS,
)
STATEMENT_ERRORS = _HotMetric(
    "shadowproxy_statement_errors",
    "ErrorResponses a store returned to a relayed client request, by store.",
    ["store"],
    "counter",
)
# Moved on every mirrored unit: lock-free, like the relay's own.
MIRROR_QUEUE_DEPTH = _HotMetric(
    "shadowproxy_mirror_queue_depth",
    "Mirror units waiting in the in-memory session queues.",
    [],
    "gauge",
).labels()
MIRROR_LAG = _HotMetric(
    "shadowproxy_mirror_lag_seconds",
    "Time from the authoritative commit of a unit to its apply on the mirror store.",
    [],
    "histogram",
    _LAG_BUCKETS,
).labels()
MIRROR_APPLIED = _HotMetric(
    "shadowproxy_mirror_applied_units",
    "Mirror units (one transaction or one autocommit statement) applied to the mirror store.",
    [],
    "counter",
).labels()
MIRROR_STATEMENTS = _HotMetric(
    "shadowproxy_mirror_statements",
    "Statements applied to the mirror store.",
    [],
    "counter",
).labels()
MIRROR_FAILURES = Counter(
    "shadowproxy_mirror_failures_total",
    "Mirror units that could not be applied live, by reason "
    "(connect, lost, overflow, journaling, shutdown, rejected).",
    ["reason"],
    registry=REGISTRY,
)
JOURNAL_BACKLOG = Gauge(
    "shadowproxy_journal_backlog_units",
    "Units written to the durable journal and not yet replayed.",
    registry=REGISTRY,
)
JOURNAL_HELD = Gauge(
    "shadowproxy_journal_held_units",
    "Units held in memory because the journal cannot be written (disk full, I/O error).",
    registry=REGISTRY,
)
JOURNAL_WRITE_ERRORS = Counter(
    "shadowproxy_journal_write_errors_total",
    "Failed appends to the journal (each retried; the units are held meanwhile).",
    registry=REGISTRY,
)
DIVERGENCE_LOG_ERRORS = Counter(
    "shadowproxy_divergence_log_write_errors_total",
    "Failed or short writes to the divergence log (the lines are kept and written later).",
    registry=REGISTRY,
)
JOURNAL_APPENDED = Counter(
    "shadowproxy_journal_appended_units_total", "Units appended to the journal.", registry=REGISTRY
)
JOURNAL_REPLAYED = Counter(
    "shadowproxy_journal_replayed_units_total",
    "Units replayed from the journal to the mirror store.",
    registry=REGISTRY,
)
MIRROR_SYNC_WAIT = Histogram(
    "shadowproxy_mirror_sync_wait_seconds",
    "sync consistency: time a commit waited for the mirror store to apply its transaction.",
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)
MIRROR_SYNC_FALLBACKS = Counter(
    "shadowproxy_mirror_sync_fallbacks_total",
    "sync consistency: transactions mirrored after their commit instead of in lock-step, by "
    "reason (timeout, journal, parked: new-only began under the commit, multi-statement "
    "transaction control, no transaction block).",
    ["reason"],
    registry=REGISTRY,
)
SEQUENCES_ADVANCED = Counter(
    "shadowproxy_sequences_advanced_total",
    "Mirror-store sequences moved forward to the authoritative store's value.",
    registry=REGISTRY,
)
AUTHORITY_SWITCHES = Counter(
    "shadowproxy_authority_switches_total",
    "Sessions that moved their writes to another store in place (write-new and back), "
    "by the store they moved to and outcome (moved; failed: the session stays, retried).",
    ["store", "outcome"],
    registry=REGISTRY,
)
AUTHORITY_SWITCH_SECONDS = Histogram(
    "shadowproxy_authority_switch_seconds",
    "Time a session's next request waited while the session moved its writes to the "
    "other store (quiesce, state replay, new connection).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
READ_ROUTE_FALLBACKS = Counter(
    "shadowproxy_read_route_fallbacks_total",
    "Autocommit reads the mode routes to the non-authoritative store but the "
    "authoritative store served, by reason (read_your_writes: the session's mirrored "
    "writes had not reached the read store in time; unavailable; prepare).",
    ["reason"],
    registry=REGISTRY,
)
# Hot: every sampled read counts an outcome and observes both latencies.
SHADOW_READS = _HotMetric(
    "shadowproxy_shadow_reads",
    "Sampled autocommit reads re-run on the other store, by outcome (match, mismatch, "
    "transient: equal on a re-check, inconclusive: still different but the proxy wrote "
    "the tables read meanwhile, shed, error).",
    ["outcome"],
    "counter",
)
SHADOW_READ_LATENCY = _HotMetric(
    "shadowproxy_shadow_read_latency_seconds",
    "Latency of the same sampled read on each store (store = old/new), per statement "
    "fingerprint (the first 50, then other).",
    ["store", "fingerprint"],
    "histogram",
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
DIVERGENCES = Counter(
    "shadowproxy_divergences_total",
    "Divergences detected between the stores, by kind (rowcount, error, unmirrorable, ...).",
    ["kind"],
    registry=REGISTRY,
)
PROTOCOL_ERRORS = Counter(
    "shadowproxy_protocol_errors_total",
    "Connections closed because a peer broke the wire protocol, by side (client, old, new).",
    ["side"],
    registry=REGISTRY,
)
SESSION_ERRORS = Counter(
    "shadowproxy_session_errors_total",
    "Client sessions ended by an unexpected error in the proxy (logged with a traceback).",
    registry=REGISTRY,
)
MODE_INFO = Gauge(
    "shadowproxy_mode_info",
    "1 for the mode this instance runs, 0 for the others.",
    ["mode"],
    registry=REGISTRY,
)
MODE_EPOCH = Gauge(
    "shadowproxy_mode_epoch", "Epoch of the mode this instance runs.", registry=REGISTRY
)
CONTROL_STORE_UP = Gauge(
    "shadowproxy_control_store_up",
    "1 while the control store (or, without one, the local state file) answers; 0 while this "
    "instance runs its last known mode without it (fail static).",
    registry=REGISTRY,
)
MODE_CHANGES = Counter(
    "shadowproxy_mode_changes_total",
    "Mode changes this instance applied.",
    registry=REGISTRY,
)
CONTROL_LAST_HEARTBEAT = Gauge(
    "shadowproxy_control_last_heartbeat_timestamp_seconds",
    "Unix time of this instance's last heartbeat written to the control store.",
    registry=REGISTRY,
)
