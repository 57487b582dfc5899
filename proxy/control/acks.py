"""Waiting for the fleet: which live instances run an epoch, and which do not (yet).

An instance is live while its heartbeat is newer than three of its own poll
intervals (judged by the control database's clock).  ``wait_for_epoch``
returns as soon as every live instance runs the epoch (or a later one), or at
the timeout.  An instance that was live when the change was made and stops
heartbeating meanwhile, or that went silent in the last minutes (crashed,
partitioned from the control store, without the goodbye of a clean shutdown),
is reported as not applied, never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.control.store import ControlStore

_POLL = 0.02  # seconds between reads of the instances table while waiting


@dataclass
class Acks:
    epoch: int
    applied: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # live, older epoch
    gone: list[dict[str, Any]] = field(default_factory=list)  # silent, on an older epoch
    seconds: float = 0.0  # from the start of the wait to the last acknowledgement seen

    @property
    def complete(self) -> bool:
        return not self.pending and not self.gone

    def to_json(self) -> dict[str, Any]:
        def brief(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            keys = ("instance", "mode", "epoch", "heartbeat_age")
            return [{k: r[k] for k in keys} for r in rows]

        return {
            "epoch": self.epoch,
            "complete": self.complete,
            "seconds": round(self.seconds, 4),
            "applied": brief(self.applied),
            "not_applied": brief(self.pending),
            "gone": brief(self.gone),
        }


def live_instances(rows: list[dict[str, Any]]) -> set[str]:
    return {r["instance"] for r in rows if r["live"]}


async def wait_for_epoch(
    store: ControlStore, epoch: int, timeout: float, expected: set[str] | None = None
) -> Acks:
    """Wait until every live instance (and every one in ``expected``) runs ``epoch``."""
    started = time.monotonic()
    deadline = started + timeout
    expected = set(expected or ())
    last_ack = started
    seen_applied: set[str] = set()
    while True:
        rows = await store.instances()
        acks = Acks(epoch)
        for r in rows:
            if r["epoch"] >= epoch and (r["live"] or r["instance"] in expected):
                acks.applied.append(r)
            elif r["live"]:
                acks.pending.append(r)
            elif (r["instance"] in expected and not r["stopped"]) or r["recent"]:
                acks.gone.append(r)
        newly = {r["instance"] for r in acks.applied} - seen_applied
        if newly:
            last_ack = time.monotonic()
            seen_applied |= newly
        acks.seconds = last_ack - started
        if not acks.pending or time.monotonic() >= deadline:
            return acks
        await asyncio.sleep(_POLL)
