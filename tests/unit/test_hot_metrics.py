"""The hot-path metrics (STATEMENTS, UPSTREAM_LATENCY): plain numbers, exported as usual.

Children are driven directly (``inc``, ``observe``) and then read back from
``generate_latest(proxy.metrics.REGISTRY)`` parsed by prometheus_client's own
text parser; the expected values are computed by hand here.  The registry is
global, so every test uses label values of its own.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics
from proxy.metrics import REGISTRY, STATEMENTS, UPSTREAM_LATENCY

BOUNDS = (
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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def scrape(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """Family name -> family, from the text exposition."""
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any, **labels: str) -> list[Any]:
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def statement_value(kind: str, store: str) -> float:
    fam = scrape()["shadowproxy_statements"]
    (s,) = samples(fam, kind=kind, store=store)
    assert s.name == "shadowproxy_statements_total"
    assert s.labels == {"kind": kind, "store": store}
    return float(s.value)


def latency(store: str) -> tuple[dict[float, float], float, float]:
    """(cumulative bucket counts by upper bound, _count, _sum) of one store."""
    fam = scrape()["shadowproxy_upstream_latency_seconds"]
    buckets: dict[float, float] = {}
    count = total = math.nan
    for s in samples(fam, store=store):
        if s.name.endswith("_bucket"):
            assert set(s.labels) == {"store", "le"}
            buckets[float(s.labels["le"])] = float(s.value)
        elif s.name.endswith("_count"):
            count = float(s.value)
        elif s.name.endswith("_sum"):
            total = float(s.value)
        else:
            raise AssertionError(f"unexpected sample {s}")
    return buckets, count, total


# --------------------------------------------------------------------------- counter


def test_statement_counter_values() -> None:
    store = unique("st")
    read = STATEMENTS.labels("read", store)
    write = STATEMENTS.labels("write", store)
    assert STATEMENTS.labels("read", store) is read  # bound once, reused
    for _ in range(7):
        read.inc()
    write.inc(3)
    write.inc(0.5)
    write.value += 1  # what the lean path does
    assert statement_value("read", store) == 7.0
    assert statement_value("write", store) == 4.5
    # another store with the same kinds is a separate series
    other = unique("st")
    STATEMENTS.labels("read", other).inc()
    assert statement_value("read", other) == 1.0
    assert statement_value("read", store) == 7.0


def test_statement_counter_family_shape() -> None:
    store = unique("shape")
    STATEMENTS.labels("ddl", store).inc(2)
    text = generate_latest(REGISTRY).decode()
    assert text.count("# TYPE shadowproxy_statements_total counter\n") == 1
    assert f'shadowproxy_statements_total{{kind="ddl",store="{store}"}} 2.0\n' in text
    fam = scrape()["shadowproxy_statements"]
    assert fam.type == "counter"
    assert fam.documentation.startswith("Statements relayed")
    # no _created series (disabled for every counter)
    assert not any(s.name.endswith("_created") for s in fam.samples)


def test_fresh_child_exports_zero() -> None:
    store = unique("zero")
    STATEMENTS.labels("txn", store)
    assert statement_value("txn", store) == 0.0
    UPSTREAM_LATENCY.labels(store)
    buckets, count, total = latency(store)
    assert buckets == {**dict.fromkeys(BOUNDS, 0.0), math.inf: 0.0}
    assert (count, total) == (0.0, 0.0)


def test_server_counters_cover_every_kind() -> None:
    """The relay binds one child per Kind: each shows up under its value."""
    from proxy.classify import Kind

    store = unique("kinds")
    children = {k: STATEMENTS.labels(k.value, store) for k in Kind}
    for i, k in enumerate(Kind, start=1):
        children[k].value += i
    for i, k in enumerate(Kind, start=1):
        assert statement_value(k.value, store) == float(i)


# ------------------------------------------------------------------------- histogram


def expected_cumulative(values: list[float]) -> dict[float, float]:
    """By hand: a value goes in every bucket whose upper bound it does not exceed."""
    out = {}
    for b in BOUNDS:
        out[b] = float(sum(1 for v in values if v <= b))
    out[math.inf] = float(len(values))
    return out


def test_bucket_bounds_are_the_documented_ones() -> None:
    assert UPSTREAM_LATENCY.buckets == BOUNDS
    store = unique("bounds")
    UPSTREAM_LATENCY.labels(store).observe(0.003)
    buckets, _, _ = latency(store)
    assert sorted(buckets) == [*BOUNDS, math.inf]
    text = generate_latest(REGISTRY).decode()
    # +Inf spelled as Prometheus expects, bounds as Go floats
    assert f'shadowproxy_upstream_latency_seconds_bucket{{le="+Inf",store="{store}"}} 1.0' in text
    assert f'shadowproxy_upstream_latency_seconds_bucket{{le="0.0001",store="{store}"}} 0.0' in text
    assert f'shadowproxy_upstream_latency_seconds_bucket{{le="10.0",store="{store}"}} 1.0' in text


def test_value_on_a_bound_counts_in_that_bucket() -> None:
    store = unique("le")
    h = UPSTREAM_LATENCY.labels(store)
    for b in BOUNDS:
        h.observe(b)
    buckets, count, total = latency(store)
    # the i-th bound holds exactly the i values <= it
    assert buckets == {**{b: float(i) for i, b in enumerate(BOUNDS, start=1)}, math.inf: 16.0}
    assert count == 16.0
    assert total == pytest.approx(sum(BOUNDS))


def test_hand_computed_histogram() -> None:
    store = unique("hand")
    values = [
        0.0,  # below every bound
        0.00005,
        0.0001,  # on the first bound
        0.0001000001,  # just above it
        0.0007,
        0.001,
        0.02,
        0.025,
        0.3,
        0.9999,
        1.0,
        3.0,
        9.99,
        10.0,  # on the last bound
        10.0001,  # only +Inf
        42.0,
    ]
    h = UPSTREAM_LATENCY.labels(store)
    for v in values:
        h.observe(v)
    buckets, count, total = latency(store)
    # written out by hand, cumulative
    assert buckets == {
        0.0001: 3.0,
        0.00025: 4.0,
        0.0005: 4.0,
        0.001: 6.0,
        0.0025: 6.0,
        0.005: 6.0,
        0.01: 6.0,
        0.025: 8.0,
        0.05: 8.0,
        0.1: 8.0,
        0.25: 8.0,
        0.5: 9.0,
        1.0: 11.0,
        2.5: 11.0,
        5.0: 12.0,
        10.0: 14.0,
        math.inf: 16.0,
    }
    assert buckets == expected_cumulative(values)
    assert count == 16.0
    assert total == pytest.approx(sum(values))
    # cumulative: never decreasing, +Inf equals _count
    ordered = [buckets[b] for b in sorted(buckets)]
    assert ordered == sorted(ordered)
    assert buckets[math.inf] == count


def test_histograms_per_store_are_independent_and_accumulate() -> None:
    a, b = unique("a"), unique("b")
    ha, hb = UPSTREAM_LATENCY.labels(a), UPSTREAM_LATENCY.labels(b)
    ha.observe(0.002)
    hb.observe(7.0)
    hb.observe(0.0)
    assert latency(a) == (expected_cumulative([0.002]), 1.0, pytest.approx(0.002))
    ha.observe(0.002)
    buckets, count, total = latency(a)
    assert buckets == expected_cumulative([0.002, 0.002])
    assert (count, total) == (2.0, pytest.approx(0.004))
    buckets, count, total = latency(b)
    assert buckets == expected_cumulative([7.0, 0.0])
    assert (count, total) == (2.0, 7.0)


def test_matches_prometheus_client_histogram() -> None:
    """Same observations into a stock Histogram: same exported buckets, count and sum."""
    values = [0.0001, 0.00011, 0.0049, 0.005, 0.0051, 0.5, 0.5, 2.5, 11.0, 0.0] + [
        i / 997 for i in range(300)
    ]
    store = unique("ref")
    hot = UPSTREAM_LATENCY.labels(store)
    private = CollectorRegistry()
    ref = Histogram("ref_latency_seconds", "reference", ["store"], buckets=BOUNDS, registry=private)
    for v in values:
        hot.observe(v)
        ref.labels(store).observe(v)
    got = latency(store)
    fam = scrape(private)["ref_latency_seconds"]
    want_buckets = {
        float(s.labels["le"]): float(s.value) for s in fam.samples if s.name.endswith("_bucket")
    }
    (want_count,) = [s.value for s in fam.samples if s.name.endswith("_count")]
    (want_sum,) = [s.value for s in fam.samples if s.name.endswith("_sum")]
    assert got[0] == want_buckets == expected_cumulative(values)
    assert got[1] == want_count == len(values)
    assert got[2] == pytest.approx(want_sum)


def test_histogram_family_shape() -> None:
    store = unique("fam")
    UPSTREAM_LATENCY.labels(store).observe(0.01)
    fam = scrape()["shadowproxy_upstream_latency_seconds"]
    assert fam.type == "histogram"
    assert fam.documentation.startswith("Time from forwarding a request")
    names = {s.name for s in samples(fam, store=store)}
    assert names == {
        "shadowproxy_upstream_latency_seconds_bucket",
        "shadowproxy_upstream_latency_seconds_count",
        "shadowproxy_upstream_latency_seconds_sum",
    }


def test_unsorted_buckets_are_sorted_and_collector_unregisters() -> None:
    name = f"shadowproxy_test_hot_{uuid.uuid4().hex[:8]}"
    hot = metrics._HotMetric(name, "test only", ["s"], "histogram", (1.0, 0.1, 0.5))
    try:
        assert hot.buckets == (0.1, 0.5, 1.0)
        hot.labels("x").observe(0.5)
        hot.labels("x").observe(0.05)
        hot.labels("x").observe(0.7)
        fam = scrape()[name]
        got = {float(s.labels["le"]): s.value for s in fam.samples if s.name.endswith("_bucket")}
        assert got == {0.1: 1.0, 0.5: 2.0, 1.0: 3.0, math.inf: 3.0}
    finally:
        REGISTRY.unregister(hot)
    assert name not in scrape()
