"""The metric catalogue: README in sync with the registries, names and labels by the rules."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from proxy.metrics_catalogue import BEGIN, END, MetricDoc, catalogue, render, splice
from tests.observability.expressions import README, ROOT

# Every label must have a bounded set of values; a new label is added here on purpose,
# with the reason its values are bounded.
BOUNDED_LABELS = {
    "kind": "statement kind, divergence kind or comparator row kind: fixed enums",
    "store": "old | new",
    "reason": "fixed failure reasons",
    "side": "client | old | new",
    "mode": "the six modes of the ladder",
    "outcome": "match | mismatch | shed | error",
    "result": "identical | different | error",
    "table": "top-N tables plus other",
    "fingerprint": "top-N literal-free statement fingerprints plus other",
}


@pytest.fixture(scope="module")
def docs() -> list[MetricDoc]:
    found = catalogue()
    assert len(found) >= 15, found
    return found


def test_readme_catalogue_is_the_generated_table() -> None:
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert splice(text, render(catalogue())) == text, (
        "README metric catalogue is stale: run `python -m proxy.metrics_catalogue --write`"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy.metrics_catalogue", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_names_follow_prometheus_conventions(docs: list[MetricDoc]) -> None:
    for d in docs:
        assert re.fullmatch(r"shadowproxy_[a-z0-9_]+", d.name), d.name
        assert d.help, f"{d.name}: no help text"
        if d.type == "counter":
            assert d.name.endswith("_total"), d.name
        else:
            assert not d.name.endswith("_total"), f"{d.name}: only counters end in _total"
        if d.type == "histogram":
            # Base units: every histogram here measures time, in seconds.
            assert d.name.endswith("_seconds"), d.name
        for unit in ("_ms", "_milliseconds", "_minutes", "_bytes_kb"):
            assert unit not in d.name, f"{d.name}: use base units"


def test_labels_are_bounded_and_never_carry_literals(docs: list[MetricDoc]) -> None:
    for d in docs:
        unknown = set(d.labels) - set(BOUNDED_LABELS)
        assert not unknown, f"{d.name}: labels {unknown} are not known to be bounded"


def test_catalogue_covers_the_core_metrics(docs: list[MetricDoc]) -> None:
    names = {d.name: d for d in docs}
    assert names["shadowproxy_divergences_total"].labels == ("kind",)
    assert names["shadowproxy_statements_total"].labels == ("kind", "store")
    assert names["shadowproxy_upstream_latency_seconds"].type == "histogram"
    assert names["shadowproxy_mode_epoch"].type == "gauge"
