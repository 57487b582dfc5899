"""Differences found while the application writes: re-check before reporting.

A write in flight (applied on the authoritative store, not yet mirrored) looks like a
difference.  Each difference is re-checked after the settle delay — and, when the
proxy's admin URL is known, once its mirror queue and journal are empty — by fetching
the rows again from both stores, twice.  Only a difference seen in both re-checks is
reported; the others are counted as transient.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson

from comparator.checksum import TableComparer
from comparator.diff import KeyedOutcome
from comparator.plan import TablePlan
from comparator.report import TableResult

log = logging.getLogger(__name__)

RECHECKS = 2
DRAIN_TIMEOUT = 60.0


@dataclass
class Pending:
    """A compared table whose differences are not confirmed yet."""

    plan: TablePlan
    comparer: TableComparer
    elapsed: float = 0.0
    rows: int = 0
    keyed: KeyedOutcome = field(default_factory=KeyedOutcome)
    only_a: list[tuple[Any, ...]] = field(default_factory=list)
    only_b: list[tuple[Any, ...]] = field(default_factory=list)
    transient: int = 0

    @property
    def count(self) -> int:
        return self.keyed.count + len(self.only_a) + len(self.only_b)

    async def recheck(self) -> None:
        before = self.count
        if self.plan.keyless:
            again = await self.comparer.segment(None, None)
            self.only_a = _common(self.only_a, again.only_a)
            self.only_b = _common(self.only_b, again.only_b)
        else:
            fresh = await self.comparer.classify_keys(self.keyed.all_keys())
            self.keyed = _still(self.keyed, fresh)
        self.transient += before - self.count

    def result(self) -> TableResult:
        from comparator.run import row_diff

        return TableResult(
            name=self.plan.name,
            schema=self.plan.schema,
            keyless=self.plan.keyless,
            rows=self.rows,
            elapsed=self.elapsed,
            transient=self.transient,
            diff=row_diff(self.plan, self.keyed, self.only_a, self.only_b),
            inexact=self.plan.inexact,
            notes=self.plan.notes,
        )


def _still(first: KeyedOutcome, fresh: KeyedOutcome) -> KeyedOutcome:
    """Differences present in both checks, as the fresh check classifies them."""
    out = KeyedOutcome()
    seen = set(first.missing) | set(first.extra) | set(first.mismatched)
    out.missing = {k: v for k, v in fresh.missing.items() if k in seen}
    out.extra = {k: v for k, v in fresh.extra.items() if k in seen}
    out.mismatched = {k: v for k, v in fresh.mismatched.items() if k in seen}
    return out


def _common(first: list[tuple[Any, ...]], fresh: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Multiset intersection of whole rows (rows may hold unhashable documents)."""
    left: dict[str, int] = {}
    for r in fresh:
        left[repr(r)] = left.get(repr(r), 0) + 1
    out = []
    for r in first:
        if left.get(repr(r), 0) > 0:
            left[repr(r)] -= 1
            out.append(r)
    return out


async def settle(tables: list[Pending], delay: float, proxy_admin: str | None) -> None:
    differing = [t for t in tables if t.count]
    if not differing:
        return
    log.info("re-checking %d differing rows after %.1fs", sum(t.count for t in differing), delay)
    for round_no in range(RECHECKS):
        await asyncio.sleep(delay if round_no == 0 else delay / 2)
        if proxy_admin:
            await wait_mirror_drained(proxy_admin)
        await asyncio.gather(*(t.recheck() for t in differing))
        differing = [t for t in differing if t.count]
        if not differing:
            return


async def wait_mirror_drained(admin_url: str, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Wait until the proxy's /status shows no mirror backlog (queue and journal)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(_status, admin_url)
        except OSError as exc:
            log.warning("proxy admin %s unreachable: %s", admin_url, exc)
            return False
        backlog = ("mirror_queue_depth", "journal_backlog_units", "mirror_inflight")
        if not any(status.get(k) for k in backlog):
            return True
        await asyncio.sleep(0.2)
    log.warning("proxy mirror backlog did not drain in %.0fs: %s", timeout, status)
    return False


def _status(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url.rstrip("/") + "/status", timeout=5) as r:
        return dict(orjson.loads(r.read()))
