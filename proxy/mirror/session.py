"""One client session's ordered mirror queue, applied without a task of its own.

How this works: units are queued in session order.  Whenever something may let
the head unit go (a unit queued, the previous one applied, the watermark
moved, the journal drained) ``kick`` looks at it: it is sent to the session's
mirror connection once the manager is live and every unit it must follow is
applied (``after <= watermark``); otherwise the session waits in the
manager's ``blocked`` set until the next pulse.  The connection calls back
when the store has answered (see connection.py), and the next unit goes.  One
unit at a time per session, so the mirror sees the session's transactions in
order; sessions apply in parallel.  Only a new connection (connect and
authenticate) runs as a task.

A unit leaves the queue once applied; one the mirror could not take stays at
the head until the manager's spill moves the whole queue to the journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from proxy import metrics
from proxy.classify import Kind, classify, fingerprint, tables_of
from proxy.mirror.connection import ItemResult, MirrorConnection, MirrorUnavailable
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.unit import Unit

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager

log = logging.getLogger(__name__)


def check_results(unit: Unit, results: list[ItemResult], divergences: DivergenceLog) -> bool:
    """Compare the mirror's answers with the authoritative ones; True if all agree."""
    clean = True
    for item, res in zip(unit.items, results, strict=True):
        failed = res.error is not None or res.skipped
        if not failed and (res.tags == item.tags or not item.tags):
            # No tag on the authoritative side: a portal the client left suspended
            # (rows fetched with a limit, never run to the end); nothing to compare.
            continue
        where = {
            "session": unit.session_id,
            "seq": unit.seq,
            "fingerprint": fingerprint(item.sql),
            "tables": list(tables_of(item.sql)),
            "old": item.tags,
        }
        if failed:
            error = res.error or {}
            divergences.record(
                "error",
                **where,
                new_error={
                    "sqlstate": error.get("C", ""),
                    "message": error.get("M", "skipped after an earlier error"),
                },
            )
            return False  # the rest of the unit did not run (or was rolled back)
        divergences.record("rowcount", **where, new=res.tags)
        clean = False
    return clean


def failed(results: list[ItemResult]) -> bool:
    return any(r.error is not None or r.skipped for r in results)


class SessionMirror:
    """One client session's ordered mirror queue."""

    def __init__(self, manager: MirrorManager, session_id: int, params: dict[str, str]) -> None:
        self.manager = manager
        self.session_id = session_id
        self.params = params
        self.queue: deque[Unit] = deque()
        self.conn: MirrorConnection | None = None
        self.busy = False  # a unit (or a connect) is in flight
        self._closing = False
        self._ended = False
        self._started = 0.0
        self._latency = metrics.UPSTREAM_LATENCY.labels(manager.store_label)
        # Resolved once the session has ended (queue applied or journaled).
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def submit(self, unit: Unit) -> None:
        self.manager.submit(self, unit)

    def submit_sync(self, unit: Unit) -> asyncio.Future[bool]:
        """Queue ``unit`` and return a future resolved once it is applied (True)
        or journaled (False); the relay holds the authoritative commit until then."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.manager.submit(self, unit, waiter)
        return waiter

    @property
    def idle(self) -> bool:
        """Every unit of this session is applied (a unit leaves the queue once applied)."""
        return not self.queue

    def enqueue(self, unit: Unit) -> None:
        self.queue.append(unit)
        self._account(1, unit.size)
        if not self.busy:
            self.kick()

    def _account(self, units: int, size: int) -> None:
        m = self.manager
        m.queued_units += units
        m.queued_bytes += size
        # Every unit passes here twice: the gauge moves by the difference (both
        # directions' queues add up), not by a walk over the managers.
        metrics.MIRROR_QUEUE_DEPTH.inc(units)

    def take_all(self) -> list[Unit]:
        units = list(self.queue)
        self.queue.clear()
        self._account(-len(units), -sum(u.size for u in units))
        return units

    def wake(self) -> None:
        self.kick()

    def close(self) -> None:
        """The client left: finish the queue, then close the connection."""
        self._closing = True
        self.kick()

    def kick(self) -> None:
        """Send the head unit if it may go now."""
        if self.busy or self._ended:
            return
        m = self.manager
        if not self.queue:
            if self._closing:
                self.end()
            return
        unit = self.queue[0]
        if m.journaling or unit.after > m.watermark:
            m.blocked.add(self)  # the journal takes over, or our turn comes
            return
        self.busy = True
        m.apply_started()
        self._started = time.perf_counter()
        conn = self.conn
        if conn is None or not conn.connected:
            m.track(asyncio.get_running_loop().create_task(self._connect(unit)))
            return
        conn.start(unit, m.config.apply_timeout, self._applied)

    async def _connect(self, unit: Unit) -> None:
        conn = self.manager.connection(self.params)
        try:
            await conn.connect()
        except MirrorUnavailable as exc:
            self._unavailable(exc, "connect")
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        if self._ended:  # end() gave the apply up already
            conn.close()
            return
        if not self.queue or self.queue[0] is not unit:
            conn.close()  # the queue went to the journal meanwhile
            self.busy = False
            self.manager.apply_finished()
            self.kick()
            return
        self.conn = conn
        conn.start(unit, self.manager.config.apply_timeout, self._applied)

    def _unavailable(self, exc: MirrorUnavailable, reason: str) -> None:
        """The head unit could not be applied: it stays queued, the journal takes over."""
        if self._ended:
            return  # end() gave the apply up already
        m = self.manager
        self.busy = False
        m.apply_finished()
        m.last_error = str(exc)
        log.warning("mirror session %d: %s", self.session_id, exc)
        self.conn = None
        m.start_journaling(reason)
        self.kick()

    def _applied(self, results: list[ItemResult] | None, exc: MirrorUnavailable | None) -> None:
        if self._ended:
            return
        if exc is not None or results is None:
            self._unavailable(exc or MirrorUnavailable("no answer"), "lost")
            return
        m = self.manager
        self.busy = False
        m.apply_finished()
        if not self.queue:
            return  # spilled to the journal while in flight (replay is at-least-once)
        unit = self.queue.popleft()
        self._latency.observe(time.perf_counter() - self._started)
        self._account(-1, -unit.size)
        m.finished(unit.order, live=True)
        for it in unit.items:
            if classify(it.sql) is Kind.DDL:
                m.refresh_catalog()  # new columns, defaults or keys: pinning must know them
                break
        metrics.MIRROR_APPLIED.inc()
        metrics.MIRROR_STATEMENTS.inc(len(unit.items))
        metrics.MIRROR_LAG.observe(max(0.0, time.time() - unit.committed_at))
        if not check_results(unit, results, m.divergences) and failed(results):
            m.reject(unit)
        self.kick()

    def end(self) -> None:
        """The session is over: what is still queued goes to the journal (only at
        shutdown: a closing session ends once its queue is applied)."""
        if self._ended:
            return
        self._ended = True
        m = self.manager
        m.blocked.discard(self)
        m.journal_units(self.take_all(), "shutdown")
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.busy:  # the apply in flight is given up with its connection
            self.busy = False
            m.apply_finished()
        m.sessions.pop(self.session_id, None)
        if not self.ended.done():
            self.ended.set_result(None)
