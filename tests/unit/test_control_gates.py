"""The ladder rules and the gates, as tables."""

from __future__ import annotations

import pytest

from proxy.control.gates import (
    Bounds,
    CompareRun,
    Facts,
    InstanceFacts,
    Step,
    StepError,
    classify_step,
    decide,
    evaluate_gates,
    rollback_target,
)
from proxy.routing import LADDER, Mode

OO, D, S, R, W, N = LADDER  # old-only, dual-write, shadow-read, read-new, write-new, new-only
F, B, X, _ = Step.FORWARD, Step.BACKWARD, None, Step.SAME  # X: refused outright

# STEPS[current][target]: every cell of the ladder.
STEPS = {
    OO: {OO: _, D: F, S: X, R: X, W: X, N: X},
    D: {OO: B, D: _, S: F, R: X, W: X, N: X},
    S: {OO: X, D: B, S: _, R: F, W: X, N: X},
    R: {OO: X, D: B, S: B, R: _, W: F, N: X},
    W: {OO: X, D: B, S: B, R: B, W: _, N: F},
    N: {OO: X, D: B, S: B, R: B, W: B, N: _},
}
CELLS = [(c, t, STEPS[c][t]) for c in LADDER for t in LADDER]


@pytest.mark.parametrize(("current", "target", "expected"), CELLS)
def test_ladder(current: Mode, target: Mode, expected: Step | None) -> None:
    if expected is None:
        with pytest.raises(StepError):
            classify_step(current, target)
    else:
        assert classify_step(current, target) is expected


def test_refusals_explain_themselves() -> None:
    with pytest.raises(StepError, match="one at a time .next is shadow-read"):
        classify_step(D, R)
    with pytest.raises(StepError, match="go back to dual-write first"):
        classify_step(W, OO)


@pytest.mark.parametrize(("mode", "back"), [(OO, None), (D, OO), (S, D), (R, S), (W, R), (N, W)])
def test_rollback_target(mode: Mode, back: Mode | None) -> None:
    assert rollback_target(mode) is back


NOW = 1_000_000.0
BOUNDS = Bounds(shadow_mismatch_max=0.01, compare_max_age=3600)


def inst(name: str = "a:1", live: bool = True, **kw: object) -> InstanceFacts:
    return InstanceFacts(name, D, 1, live, **kw)  # type: ignore[arg-type]


def run(finished_ago: float, identical: bool, started_ago: float | None = None) -> CompareRun:
    started = NOW - (started_ago if started_ago is not None else finished_ago + 60)
    return CompareRun(1, started, NOW - finished_ago, identical, 0 if identical else 5, 3)


CLEAN = run(60, True)

# (name, target, facts, failed gate names)
GATES = [
    ("all clear", S, Facts((inst(),), CLEAN, CLEAN), []),
    ("no instance at all", S, Facts(), []),
    ("mirror queue", S, Facts((inst(mirror_queue_depth=3),)), ["mirror_backlog"]),
    ("journal", R, Facts((inst(journal_backlog=1),)), ["journal"]),
    ("rejected units", R, Facts((inst(rejected_units=2),)), ["journal"]),
    ("dead instance backlog ignored", S, Facts((inst(live=False, journal_backlog=9),)), []),
    ("divergence, no comparator", S, Facts((inst(last_divergence_at=NOW - 10),)), ["divergences"]),
    (
        "divergence before the clean run",
        S,
        Facts((inst(last_divergence_at=NOW - 500),), CLEAN, CLEAN),
        [],
    ),
    (
        "divergence after the clean run started",
        S,
        Facts((inst(last_divergence_at=NOW - 100),), CLEAN, CLEAN),
        ["divergences"],
    ),
    (
        "divergence of a dead instance still counts",
        S,
        Facts((inst(live=False, last_divergence_at=NOW - 5),), CLEAN, CLEAN),
        ["divergences"],
    ),
    ("shadow rate under", R, Facts((inst(shadow_reads=1000, shadow_mismatches=10),)), []),
    (
        "shadow rate over",
        R,
        Facts((inst(shadow_reads=1000, shadow_mismatches=11),)),
        ["shadow_mismatch_rate"],
    ),
    (
        "shadow rate is fleet-wide",
        R,
        Facts((inst("a", shadow_reads=10, shadow_mismatches=1), inst("b", shadow_reads=990))),
        [],
    ),
    ("comparator missing", W, Facts((inst(),)), ["comparator"]),
    ("comparator stale", N, Facts((inst(),), run(7200, True), run(7200, True)), ["comparator"]),
    ("comparator dirty", W, Facts((inst(),), run(60, False), None), ["comparator"]),
    ("comparator clean", W, Facts((inst(),), CLEAN, CLEAN), []),
    ("comparator not needed below write-new", R, Facts((inst(),)), []),
]


@pytest.mark.parametrize(("name", "target", "facts", "failed"), GATES, ids=[g[0] for g in GATES])
def test_gates(name: str, target: Mode, facts: Facts, failed: list[str]) -> None:
    gates = evaluate_gates(target, facts, BOUNDS, NOW)
    assert [g.name for g in gates if not g.passed] == failed


def test_backward_is_never_gated() -> None:
    facts = Facts((inst(mirror_queue_depth=5, journal_backlog=5, last_divergence_at=NOW),))
    decision = decide(W, D, facts, BOUNDS, NOW)
    assert decision.step is Step.BACKWARD and decision.failed and decision.allowed


def test_forward_refused_names_the_gate_and_the_override() -> None:
    decision = decide(D, S, Facts((inst("x:1", mirror_queue_depth=4),)), BOUNDS, NOW)
    assert not decision.allowed
    assert "gate mirror_backlog failed: 4 units queued on x:1" in decision.refusal()
    assert "--force" in decision.refusal()
    forced = decide(D, S, Facts((inst(mirror_queue_depth=4),)), BOUNDS, NOW, force=True)
    assert forced.allowed and forced.forced


def test_same_mode_has_no_gates() -> None:
    decision = decide(R, R, Facts((inst(mirror_queue_depth=4),)), BOUNDS, NOW)
    assert decision.step is Step.SAME and decision.gates == () and decision.allowed
