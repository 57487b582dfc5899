"""The readiness report: findings, gates of the next step, rollback command."""

from __future__ import annotations

import orjson

from proxy.control.controller import shadow_counts
from proxy.control.gates import Bounds, CompareRun, Facts, InstanceFacts
from proxy.control.report import Report, rate, to_json, to_markdown
from proxy.control.statefile import ModeState
from proxy.routing import Mode

NOW = 2_000_000.0


def instance(name: str, epoch: int, **kw: object) -> InstanceFacts:
    return InstanceFacts(name, Mode.READ_NEW, epoch, True, **kw)  # type: ignore[arg-type]


def make(mode: Mode, instances: tuple[InstanceFacts, ...], run: CompareRun | None) -> Report:
    report = Report(ModeState(mode, 5, Mode.SHADOW_READ), Facts(instances, run, run), NOW, Bounds())
    report.findings = rate(report)
    return report


def test_ready_read_new_with_a_clean_run() -> None:
    run = CompareRun(9, NOW - 120, NOW - 60, True, 0, 4)
    report = make(Mode.READ_NEW, (instance("a:1", 5, shadow_reads=100),), run)
    data = to_json(report)
    assert data["next_step"] == "write-new" and data["ready"] is True
    assert data["rollback_command"] == (
        'shadowproxy mode set shadow-read --reason "roll back read-new"'
    )
    assert data["findings"] == []
    assert orjson.loads(orjson.dumps(data)) == data  # JSON-clean


def test_findings_are_rated_and_sorted() -> None:
    lagging = instance("b:2", 4, journal_backlog=3, divergences={"rowcount": 2}, rejected_units=1)
    report = make(Mode.READ_NEW, (instance("a:1", 5), lagging), None)
    severities = [s for s, _ in report.findings]
    assert severities == sorted(severities, key=("critical", "high", "medium", "low").index)
    text = dict((f, s) for s, f in report.findings)
    assert text["instances not running epoch 5: b:2"] == "critical"
    assert any(s == "high" and "gate journal" in f for s, f in report.findings)
    assert any(s == "high" and "comparator" in f for s, f in report.findings)
    assert text["read-new but no shadow read compared yet"] == "low"
    md = to_markdown(report)
    assert "| journal | **FAIL** |" in md and "rowcount 2" in md
    assert "`shadowproxy mode set shadow-read" in md


def test_old_only_has_no_rollback() -> None:
    report = make(Mode.OLD_ONLY, (), None)
    assert report.rollback_command() is None
    assert "none (old-only is the bottom of the ladder)" in to_markdown(report)


def test_shadow_counts_from_status() -> None:
    outcomes = {"match": 90, "transient": 5, "mismatch": 5, "shed": 40, "error": 1}
    assert shadow_counts({"shadow_reads": {"outcomes": outcomes}}) == (100, 5)
    assert shadow_counts({}) == (0, 0)  # no shadow reader on this instance


def test_performance_parity_worst_first_and_rated() -> None:
    def row(fp: str, read_p99: float, shadow_p99: float) -> dict[str, object]:
        return {
            "fingerprint": fp,
            "samples": 50,
            "read_store_p50_ms": 1.0,
            "read_store_p99_ms": read_p99,
            "shadow_store_p50_ms": 1.0,
            "shadow_store_p99_ms": shadow_p99,
        }

    a = instance("a:1", 5, shadow_reads=10, parity=(row("SELECT a", 2.0, 2.2),))
    b = instance("b:1", 5, shadow_reads=10, parity=(row("SELECT b | c", 1.0, 3.0),))
    report = make(Mode.READ_NEW, (a, b), None)
    parity = to_json(report)["performance_parity"]
    assert [(p["fingerprint"], p["instance"], p["p99_ratio"]) for p in parity] == [
        ("SELECT b | c", "b:1", 3.0),
        ("SELECT a", "a:1", 1.1),
    ]
    assert ("medium", "the shadow store is 3.0x slower (p99) on SELECT b | c (b:1)") in (
        report.findings
    )
    assert "| `SELECT b \\| c` | b:1 | 50 | 1.0/1.0 | 1.0/3.0 | 3.0 |" in to_markdown(report)
