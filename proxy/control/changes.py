"""One mode change, end to end: read the state, judge the step, write it with its audit.

Shared by the CLI (``shadowproxy mode set``/``revert``) and the admin API
(``POST /mode``), for both kinds of state: the control store (fleet-wide) and
the local state file (one instance).
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from typing import Any

from proxy.control.gates import Bounds, Decision, Facts, InstanceFacts, StepError, decide
from proxy.control.statefile import ModeState
from proxy.control.store import ConcurrentChange, ControlStore, Heartbeat
from proxy.routing import Mode
from proxy.settings import Settings

REVERT = "revert"  # ChangeRequest.target value meaning "the previous mode"


class ControlUnavailable(Exception):
    """The control store could not be reached or answered with an error: nothing changed."""


class ChangeRefused(Exception):
    """The change was not made; ``str()`` says why and how to override when possible."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    target: Mode | None  # None: revert to the previous mode
    reason: str
    force: bool
    who: str


@dataclass(frozen=True, slots=True)
class ChangeResult:
    changed: bool
    state: ModeState
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            **self.state.to_json(),
            "step": self.decision.step.value,
            "forced": self.decision.forced,
            "gates": self.decision.gates_json(),
        }


def bounds_from(settings: Settings) -> Bounds:
    return Bounds(
        shadow_mismatch_max=settings.control_shadow_mismatch_max,
        compare_max_age=settings.control_compare_max_age,
    )


def default_who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def judge(
    state: ModeState, req: ChangeRequest, facts: Facts, bounds: Bounds, now: float
) -> Decision:
    """The decision on ``req`` from ``state``; ChangeRefused when it must not be made."""
    target = req.target if req.target is not None else state.previous
    if target is None:
        raise ChangeRefused(f"no previous mode to revert to (running {state.mode.value})")
    try:
        decision = decide(state.mode, target, facts, bounds, now, req.force)
    except StepError as exc:
        raise ChangeRefused(f"refused: {exc}") from None
    if not decision.allowed:
        raise ChangeRefused(decision.refusal(), decision)
    return decision


async def change_in_store(
    store: ControlStore, req: ChangeRequest, bounds: Bounds, initial: Mode
) -> ChangeResult:
    """Judge and write ``req`` in the control store (retried once on a concurrent change)."""
    for attempt in (1, 2):
        state = await store.read_mode() or await store.init_mode(initial, req.who)
        decision = judge(state, req, await store.facts(), bounds, await store.now())
        if decision.target is state.mode:
            return ChangeResult(False, state, decision)
        try:
            new = await store.change_mode(
                state.epoch, decision.target, req.who, req.reason, req.force, decision.gates_json()
            )
        except ConcurrentChange:
            if attempt == 2:
                raise ChangeRefused("the mode is being changed by someone else; retry") from None
            continue
        return ChangeResult(True, new, decision)
    raise AssertionError("unreachable")


def local_change(
    state: ModeState, req: ChangeRequest, own: InstanceFacts, bounds: Bounds
) -> tuple[Decision, ModeState | None]:
    """Judge ``req`` for a single instance without a control store.

    There is no comparator table here, so the comparator gate of ``write-new``
    and ``new-only`` fails and only ``--force`` passes it.
    """
    now = time.time()
    decision = judge(state, req, Facts((own,)), bounds, now)
    if decision.target is state.mode:
        return decision, None
    new = ModeState(
        mode=decision.target,
        epoch=state.epoch + 1,
        previous=state.mode,
        changed_at=now,
        changed_by=req.who,
        reason=req.reason,
        configured=state.configured,
    )
    return decision, new


def audit_entry(decision: Decision, state: ModeState, req: ChangeRequest) -> dict[str, Any]:
    """The local audit record: the same fields as a row of shadowproxy.audit."""
    return {
        "from_mode": decision.current.value,
        "to_mode": state.mode.value,
        "epoch": state.epoch,
        "who": req.who,
        "reason": req.reason,
        "forced": req.force,
        "gates": decision.gates_json(),
        "at": state.changed_at,
    }


def facts_of(hb: Heartbeat) -> InstanceFacts:
    """An instance's own heartbeat as gate facts (for the single-instance case)."""
    return InstanceFacts(
        instance=hb.instance,
        mode=hb.mode,
        epoch=hb.epoch,
        live=True,
        mirror_queue_depth=hb.mirror_queue_depth,
        journal_backlog=hb.journal_backlog,
        rejected_units=hb.rejected_units,
        divergences=dict(hb.divergences or {}),
        last_divergence_at=hb.last_divergence_at,
        shadow_reads=hb.shadow_reads,
        shadow_mismatches=hb.shadow_mismatches,
        mirror_lag_seconds=hb.mirror_lag_seconds,
        parity=tuple(hb.parity or ()),
    )
