"""The rules of the cutover ladder: which steps are allowed, and the gates of a forward step.

Pure functions over facts gathered elsewhere (instance heartbeats, the latest
comparator runs): no I/O, no clock (``now`` is passed in), so the whole rule
table is unit-tested.

Ladder: old-only → dual-write → shadow-read → read-new → write-new → new-only.

- Forward: one step at a time, and only when every gate passes (or ``force``,
  which is audited).  Skipping a step is refused even with ``force``: each step
  is what validates the next one (shadow reads validate reading from new...).
- Backward: never gated, any number of steps at once down to ``dual-write``,
  because writes keep flowing to both stores from ``dual-write`` to
  ``write-new``.  ``old-only`` is reachable only from ``dual-write``: it stops
  mirroring, after which the new store falls behind and must be reconciled
  before coming back, so it is a deliberate step of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.routing import LADDER, Mode

OVERRIDE_HINT = "rerun with --force to override (the override is audited)"


class StepError(Exception):
    """A change the ladder never allows, gates or not."""


class Step(enum.Enum):
    SAME = "same"
    FORWARD = "forward"
    BACKWARD = "backward"


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What one instance last reported in its heartbeat."""

    instance: str
    mode: Mode
    epoch: int
    live: bool
    heartbeat_age: float = 0.0
    mirror_queue_depth: int = 0
    journal_backlog: int = 0
    rejected_units: int = 0
    divergences: dict[str, int] = field(default_factory=dict)
    last_divergence_at: float | None = None  # unix seconds
    shadow_reads: int = 0
    shadow_mismatches: int = 0
    mirror_lag_seconds: float | None = None
    parity: tuple[dict[str, Any], ...] = ()  # worst fingerprints: latency on both stores


@dataclass(frozen=True, slots=True)
class CompareRun:
    """One row of shadowproxy.compare_runs (written by the comparator)."""

    id: int
    started_at: float | None
    finished_at: float | None
    identical: bool | None
    divergent_rows: int | None = None
    tables: int | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    instances: tuple[InstanceFacts, ...] = ()
    latest_run: CompareRun | None = None  # the latest finished comparator run
    latest_clean_run: CompareRun | None = None  # the latest finished run that found no difference

    @property
    def live(self) -> tuple[InstanceFacts, ...]:
        return tuple(i for i in self.instances if i.live)


@dataclass(frozen=True, slots=True)
class Bounds:
    shadow_mismatch_max: float = 0.001  # fraction of shadow reads that may differ
    compare_max_age: float = 3600.0  # seconds a clean comparator run stays valid


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Decision:
    current: Mode
    target: Mode
    step: Step
    gates: tuple[Gate, ...]
    forced: bool

    @property
    def failed(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)

    @property
    def allowed(self) -> bool:
        return self.step is not Step.FORWARD or self.forced or not self.failed

    def refusal(self) -> str:
        reasons = "; ".join(f"gate {g.name} failed: {g.detail}" for g in self.failed)
        return f"{self.current.value} -> {self.target.value} refused: {reasons}; {OVERRIDE_HINT}"

    def gates_json(self) -> list[dict[str, Any]]:
        return [g.to_json() for g in self.gates]


def classify_step(current: Mode, target: Mode) -> Step:
    """Forward, backward or same; StepError for a move the ladder never allows."""
    if target is current:
        return Step.SAME
    here, there = LADDER.index(current), LADDER.index(target)
    if there > here:
        if there != here + 1:
            nxt = LADDER[here + 1].value
            raise StepError(
                f"{current.value} -> {target.value}: forward steps go one at a time "
                f"(next is {nxt}); --force does not skip steps"
            )
        return Step.FORWARD
    if target is Mode.OLD_ONLY and current is not Mode.DUAL_WRITE:
        raise StepError(
            f"{current.value} -> old-only: go back to dual-write first; old-only stops "
            "mirroring, so it is only reachable from dual-write"
        )
    return Step.BACKWARD


def next_forward(mode: Mode) -> Mode | None:
    i = LADDER.index(mode)
    return LADDER[i + 1] if i + 1 < len(LADDER) else None


def rollback_target(mode: Mode) -> Mode | None:
    """The step below ``mode``: where an SRE goes back to when the current step misbehaves."""
    i = LADDER.index(mode)
    return LADDER[i - 1] if i > 0 else None


def _names(instances: Iterable[InstanceFacts]) -> str:
    return ", ".join(i.instance for i in instances)


def _gate_backlog(facts: Facts) -> Gate:
    busy = [i for i in facts.live if i.mirror_queue_depth > 0]
    if busy:
        total = sum(i.mirror_queue_depth for i in busy)
        return Gate("mirror_backlog", False, f"{total} units queued on {_names(busy)}")
    return Gate("mirror_backlog", True, f"empty on {len(facts.live)} live instances")


def _gate_journal(facts: Facts) -> Gate:
    busy = [i for i in facts.live if i.journal_backlog > 0 or i.rejected_units > 0]
    if busy:
        parts = [f"{i.instance}: {i.journal_backlog} journaled" for i in busy]
        parts += [f"{i.instance}: {i.rejected_units} rejected" for i in busy if i.rejected_units]
        return Gate("journal", False, "; ".join(parts))
    return Gate("journal", True, f"empty on {len(facts.live)} live instances")


def _gate_divergences(facts: Facts) -> Gate:
    # A divergence is resolved once a comparator run that *started* after it
    # found the stores identical; instances that died still count (all rows).
    clean = facts.latest_clean_run
    since = clean.started_at if clean and clean.started_at is not None else None
    open_ = [
        i
        for i in facts.instances
        if i.last_divergence_at is not None and (since is None or i.last_divergence_at > since)
    ]
    if open_:
        where = "since the last clean comparator run" if since else "and no clean comparator run"
        return Gate("divergences", False, f"inline divergences on {_names(open_)} {where}")
    return Gate("divergences", True, "no inline divergence since the last clean comparator run")


def shadow_mismatch_rate(instances: Iterable[InstanceFacts]) -> tuple[float, int, int]:
    reads = mismatches = 0
    for i in instances:
        reads += i.shadow_reads
        mismatches += i.shadow_mismatches
    return (mismatches / reads if reads else 0.0), mismatches, reads


def _gate_shadow(facts: Facts, bounds: Bounds) -> Gate:
    rate, mismatches, reads = shadow_mismatch_rate(facts.live)
    detail = f"{mismatches}/{reads} shadow reads differ ({rate:.4%}, bound {bounds.shadow_mismatch_max:.4%})"
    return Gate("shadow_mismatch_rate", rate <= bounds.shadow_mismatch_max, detail)


def _gate_comparator(facts: Facts, bounds: Bounds, now: float) -> Gate:
    run = facts.latest_run
    if run is None or run.finished_at is None:
        return Gate("comparator", False, "no finished comparator run in shadowproxy.compare_runs")
    age = now - run.finished_at
    if not run.identical:
        rows = run.divergent_rows if run.divergent_rows is not None else "?"
        return Gate("comparator", False, f"latest run #{run.id} found {rows} divergent rows")
    if age > bounds.compare_max_age:
        return Gate(
            "comparator",
            False,
            f"latest clean run #{run.id} is {age:.0f}s old (bound {bounds.compare_max_age:.0f}s)",
        )
    return Gate("comparator", True, f"run #{run.id} clean, {age:.0f}s old")


def evaluate_gates(target: Mode, facts: Facts, bounds: Bounds, now: float) -> tuple[Gate, ...]:
    """Every gate of a forward step to ``target`` (passed or not)."""
    gates = [_gate_backlog(facts), _gate_journal(facts), _gate_divergences(facts)]
    gates.append(_gate_shadow(facts, bounds))
    if target in (Mode.WRITE_NEW, Mode.NEW_ONLY):
        gates.append(_gate_comparator(facts, bounds, now))
    return tuple(gates)


def decide(
    current: Mode, target: Mode, facts: Facts, bounds: Bounds, now: float, force: bool = False
) -> Decision:
    """The verdict on ``current -> target``; StepError when the ladder forbids it outright.

    Gates are evaluated for backward steps too, so the audit records the state
    the fleet was in, but they never block going back.
    """
    step = classify_step(current, target)
    gates = evaluate_gates(target, facts, bounds, now) if step is not Step.SAME else ()
    return Decision(current, target, step, gates, force)
