"""Per-session mirror queues, the commit order across them, and the journal fallback.

How this works: each client session owns a ``SessionMirror`` (session.py): an
ordered queue of units applied one at a time on the session's own mirror
connection.  Every unit gets its place in the authoritative commit order
(``order``) when it is submitted, and remembers the last order committed before
its transaction began (``after``).  A session applies its head unit only
once every unit up to ``after`` has been applied (the ``watermark``): a transaction
that started after another one committed -- the next request of a connection
pool, a second ``pgbench -i`` -- reaches the mirror after it, whichever
sessions ran them.  Concurrent transactions still apply in parallel.

Whenever a unit cannot be applied live (the mirror store is down, the
connection broke, the queue is over its bound) the manager switches to
*journaling*: sessions stop starting applies; once the applies in flight have
finished, every queued unit of every session is written to the durable
journal in commit order, later units are appended directly, and the replayer
applies the journal serially (so in commit order) until it is empty; then live
mirroring resumes.  Units the mirror store rejects (an SQL error the
authoritative store did not raise) are divergences: logged, counted, and kept
in the rejected journal for repair.  Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import metrics
from proxy.mirror.activity import ACTIVITY
from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.journal import Journal, JournalError
from proxy.mirror.pinning import CATALOG_SQL, Pinner, build_catalog
from proxy.mirror.sequences import Endpoint, SequenceSync, connect_endpoint
from proxy.mirror.session import SessionMirror, check_results  # noqa: F401 (replay)
from proxy.mirror.unit import Unit
from proxy.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    connect_timeout: float
    apply_timeout: float
    queue_max_units: int
    queue_max_bytes: int
    journal_dir: Path
    # The authoritative store, for sequences (None: no credentials to read them).
    source: Endpoint | None = None
    sequence_sync_interval: float = 2.0
    label: str = "new"  # the store the mirror writes to

    @classmethod
    def from_settings(cls, settings: Settings, to_old: bool = False) -> MirrorConfig:
        """The mirror to the new store; ``to_old``: the one write-new mirrors to the
        old store with (its own journal, under ``journal_dir``/to-old)."""
        new = settings.new_dsn
        if new is None:
            raise ValueError("SHADOW_NEW_DSN: required to mirror")
        old = Endpoint(
            settings.old_dsn.host,
            settings.old_dsn.port,
            settings.old_dsn.user or new.user,
            settings.old_dsn.password,
            settings.old_dsn.database or new.database,
        )
        new_end = Endpoint(new.host, new.port, new.user, new.password, new.database)
        target, source = (old, new_end) if to_old else (new_end, old)
        return cls(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database,
            connect_timeout=settings.mirror_connect_timeout,
            apply_timeout=settings.mirror_apply_timeout,
            queue_max_units=settings.mirror_queue_max_units,
            queue_max_bytes=settings.mirror_queue_max_bytes,
            journal_dir=settings.journal_dir / "to-old" if to_old else settings.journal_dir,
            source=source,
            sequence_sync_interval=settings.sequence_sync_interval,
            label="old" if to_old else "new",
        )


# Every mirror of the process, from its start until stop() (a plain set: the class
# is compiled, and compiled classes take no weak references).
_MANAGERS: set[MirrorManager] = set()


def publish_backlog() -> None:
    """The journal gauge: every mirror of the process (one per direction), except a
    parked one (its journal waits for a revert; it is not a backlog)."""
    live = [m for m in _MANAGERS if not m.parked]
    metrics.JOURNAL_BACKLOG.set(sum(m.journal.pending() for m in live))
    metrics.JOURNAL_HELD.set(sum(m.held_total for m in _MANAGERS))


def _reopened(journal: Journal) -> Journal:
    """``journal``, or a fresh handle on its directory if an I/O error failed it:
    after a failed fsync the page cache is untrusted, and reopening checks the
    segments again (what did reach the disk is kept)."""
    if not journal.failed:
        return journal
    journal.close()
    return Journal(journal.directory)


class MirrorManager:
    def __init__(self, config: MirrorConfig, divergences: DivergenceLog) -> None:
        self.config = config
        self.divergences = divergences
        self.journal = Journal(config.journal_dir)
        self.rejected = Journal(config.journal_dir / "rejected")
        # journaling: no live applies start.  direct: queues have been spilled and
        # new units go straight to the journal.
        self.journaling = self.journal.pending() > 0
        self.direct = self.journaling
        self.sessions: dict[int, SessionMirror] = {}
        # Sessions whose head unit waits for the watermark or for live mirroring.
        self.blocked: set[SessionMirror] = set()
        self.queued_units = 0
        self.queued_bytes = 0
        self.inflight = 0
        self.order = 0  # last commit order handed out
        self.watermark = 0  # every unit with order <= watermark is applied or journaled
        self._done: set[int] = set()
        # sync consistency: order -> the future a client session waits on; True once
        # the unit is applied live, False once it is journaled instead.
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        # Created when someone waits (reads.py): most units pass with no waiter.
        self._progress: asyncio.Event | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replayer: asyncio.Task[None] | None = None
        self.last_error = ""
        self.journal_reason = "restart"  # what made the manager switch to the journal
        # Switches to the journal so far, and the last one a sync commit reported as a
        # divergence (one event per mirror failure, not one per journaled commit).
        self.episode = 0
        self.reported_episode = 0
        # Value pinning: the mirror store's catalog, read at start and after DDL.
        self.pinner = Pinner()
        self._catalog_task: asyncio.Task[None] | None = None
        self._catalog_again = False
        self.catalog_error = ""
        self.sequences_synced_at = 0.0
        self._sequences: asyncio.Task[None] | None = None
        self.sequences_error = ""
        self.store_label = config.label  # the store the mirror writes to
        # new-only: units are journaled, not applied, so a revert to write-new replays
        # them on the old store (nothing is lost); see park().
        self.parked = False
        # Units the journal could not take (disk full, an I/O error), in commit
        # order, with the reason each batch was journaled: held in memory until an
        # append succeeds, and nothing after them reaches the journal first.
        self._held: list[tuple[list[Unit], str]] = []
        self.held_units = 0
        self.held_bytes = 0
        self._rejected_held: list[Unit] = []  # the same, for the rejected journal
        self.journal_error = ""
        # Client sessions whose reading is paused while the held units are over
        # the queue bounds (see over_hold_bound); resumed once they are journaled.
        self.stalled: set[Any] = set()
        self._stopping = False  # stop() began: background loops end
        _MANAGERS.add(self)
        publish_backlog()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._replayer = asyncio.get_running_loop().create_task(self._replay_loop())
        self.refresh_catalog()
        if self.config.source is not None:
            # Not tracked with the workers: stop() cancels it before it waits for them.
            self._sequences = asyncio.get_running_loop().create_task(self._sequence_loop())

    async def _sequence_loop(self) -> None:
        c = self.config
        assert c.source is not None
        sync = SequenceSync(c.source, self.endpoint, c.apply_timeout)
        try:
            while not self._stopping:
                if self.parked:  # new-only: the old store may be gone
                    sync.close()
                    await asyncio.sleep(c.sequence_sync_interval)
                    continue
                try:
                    n = await sync.run()
                    metrics.SEQUENCES_ADVANCED.inc(n)
                    self.sequences_synced_at = time.time()
                    self.sequences_error = ""
                except Exception as exc:  # a background task: logged, shown in /status, retried
                    self.sequences_error = str(exc)
                    log.warning("mirror: sequence sync failed: %s", exc)
                await asyncio.sleep(c.sequence_sync_interval)
        finally:
            sync.close()

    # -- catalog (value pinning) --------------------------------------------------------

    def refresh_catalog(self) -> asyncio.Task[None]:
        """Read the mirror store's catalog again; one read at a time, and a read
        asked for while one runs starts after it (it may miss a change)."""
        task = self._catalog_task
        if task is not None and not task.done():
            self._catalog_again = True
            return task
        task = asyncio.get_running_loop().create_task(self._load_catalog())
        self._catalog_task = task
        self.track(task)
        return task

    async def _load_catalog(self) -> None:
        import asyncpg

        c = self.config
        while True:
            self._catalog_again = False
            try:
                conn = await connect_endpoint(self.endpoint, c.connect_timeout)
                try:
                    rows = await conn.fetch(CATALOG_SQL, timeout=c.apply_timeout)
                finally:
                    await conn.close()
                self.pinner.set_catalog(build_catalog(rows))
                self.catalog_error = ""
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                # Without a catalog, writes with generated values are reported as
                # unpinnable (never guessed); the next DDL or unknown table retries.
                self.catalog_error = str(exc)
                log.warning("mirror: cannot read the mirror store's catalog: %s", exc)
            if not self._catalog_again:
                return

    async def stop(self, timeout: float = 10.0) -> None:
        """Let sessions apply their queues, then journal whatever is left.

        Every queued unit is journaled (the ones in flight included) before any
        connection is closed; a unit given up mid-apply may then be applied
        twice (replay is at-least-once).
        """
        # A cancel can be lost when it races the end of a connect the reader awaits
        # (asyncio.wait_for on Python 3.11): the flag ends the loop all the same.
        self._stopping = True
        for task in (self._sequences, self._catalog_task):
            if task is not None:  # background readers: nothing of theirs to drain
                task.cancel()
        waits = [*self._tasks, *(sm.ended for sm in self.sessions.values())]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                log.warning(
                    "mirror: %d sessions or tasks not finished %gs into shutdown (%d applies"
                    " in flight); what they hold is journaled",
                    len(pending),
                    timeout,
                    self.inflight,
                )
        self.start_journaling("shutdown")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("mirror: %d applies still in flight at shutdown", self.inflight)
        self._spill_all("shutdown")
        self.direct = True
        for sm in list(self.sessions.values()):
            sm.end()
        deadline = time.monotonic() + timeout
        while not self.journal_held() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the disk may free up: nothing else holds them
        if self._held or self._rejected_held:
            log.critical(
                "mirror: %d units could not be journaled before exit (%s): the new store"
                " misses their writes; run the comparator to repair it",
                self.held_total,
                self.journal_error,
            )
        tasks = [*self._tasks, *([self._replayer] if self._replayer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.journal.close()
        self.rejected.close()
        _MANAGERS.discard(self)
        publish_backlog()

    @property
    def endpoint(self) -> Endpoint:
        """The mirror store, with the proxy's own credentials."""
        c = self.config
        return Endpoint(c.host, c.port, c.user, c.password, c.database)

    def connection(self, params: dict[str, str]) -> MirrorConnection:
        c = self.config
        return MirrorConnection(
            c.host, c.port, c.user, c.password, c.database, params, c.connect_timeout
        )

    def open_session(self, session_id: int, params: dict[str, str]) -> SessionMirror:
        sm = SessionMirror(self, session_id, params)
        self.sessions[session_id] = sm
        return sm

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- commit order ------------------------------------------------------------------

    def submit(
        self, sm: SessionMirror, unit: Unit, waiter: asyncio.Future[bool] | None = None
    ) -> None:
        self.order += 1
        unit.order = self.order
        ACTIVITY.note(unit)
        if waiter is not None:
            self._waiters[unit.order] = waiter
        if self.direct:
            self.journal_units([unit], "journaling")
            return
        sm.enqueue(unit)
        if (
            self.queued_units > self.config.queue_max_units
            or self.queued_bytes > self.config.queue_max_bytes
        ):
            self.start_journaling("overflow")

    def _pulse(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()
        if self.blocked:
            blocked, self.blocked = self.blocked, set()
            for sm in blocked:
                sm.kick()

    async def wait_progress(self) -> None:
        await self.progress_event().wait()

    def progress_event(self) -> asyncio.Event:
        """The event the next progress sets (taken now: a task started later
        would miss a pulse that comes before it runs)."""
        if self._progress is None:
            self._progress = asyncio.Event()
        return self._progress

    def finished(self, order: int, live: bool = False) -> None:
        """A unit was applied live or journaled: advance the watermark."""
        if self._waiters:
            self._release_waiter(order, live)
        if order == self.watermark + 1:
            self.watermark = order
            done = self._done
            while self.watermark + 1 in done:
                self.watermark += 1
                done.discard(self.watermark)
            self._pulse()
        elif order > self.watermark:
            self._done.add(order)

    # -- journaling ------------------------------------------------------------------

    def _release_waiter(self, order: int, live: bool) -> None:
        """The sync commit waiting on unit ``order`` may go on (see submit)."""
        waiter = self._waiters.pop(order, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(live)

    def start_journaling(self, reason: str) -> None:
        if not self.journaling:
            level = logging.INFO if reason == "parked" else logging.WARNING
            log.log(level, "mirror: switching to the journal (%s)", reason)
            self.episode += 1
            self.journaling = True
            self.journal_reason = reason
            self._pulse()
        self._wake.set()

    def park(self) -> None:
        """new-only: stop applying; what comes is journaled for a revert to replay."""
        if self.parked:
            return
        self.parked = True
        self.start_journaling("parked")
        publish_backlog()

    def unpark(self) -> None:
        if self.parked:
            self.parked = False
            self._wake.set()  # the replayer catches the store up, then live again
            publish_backlog()

    def drained(self) -> bool:
        """Everything submitted has been applied on the mirror store."""
        return (
            not self.parked
            and not self.journaling
            and self.queued_units == 0
            and self.inflight == 0
            and self.journal.pending() == 0
            and not self._held
        )

    def journal_units(self, units: list[Unit], reason: str) -> None:
        if not units:
            return
        if not self._held:
            try:
                self.journal.append_many(units)
            except (JournalError, OSError) as exc:
                self._journal_failed(exc)
            else:
                self._journaled(units, reason)
                return
        # Behind the units already held: the journal keeps the commit order.  A
        # sync commit waiting on one goes on, as it would with the unit queued.
        for u in units:
            self._release_waiter(u.order, False)
        self._held.append((units, reason))
        self.held_units += len(units)
        self.held_bytes += sum(u.size for u in units)
        self.start_journaling("journal-error")
        publish_backlog()

    def _journaled(self, units: list[Unit], reason: str) -> None:
        for u in units:
            self.finished(u.order)
        metrics.JOURNAL_APPENDED.inc(len(units))
        metrics.MIRROR_FAILURES.labels(reason).inc(len(units))
        publish_backlog()

    def _journal_failed(self, exc: Exception) -> None:
        metrics.JOURNAL_WRITE_ERRORS.inc()
        if not self.journal_error:
            log.error(
                "mirror: the journal cannot be written (%s): units are held in memory and"
                " retried; past the queue bounds, sessions that write are paused",
                exc,
            )
        self.journal_error = str(exc)

    @property
    def held_total(self) -> int:
        """Units held in memory for either journal (the gauge and /status)."""
        return self.held_units + len(self._rejected_held)

    @property
    def over_hold_bound(self) -> bool:
        """The held units are over the queue bounds: writing sessions must wait."""
        return bool(self._held) and (
            self.held_units > self.config.queue_max_units
            or self.held_bytes > self.config.queue_max_bytes
        )

    def journal_held(self) -> bool:
        """Append the held units (one batch, one fsync); True once none is held."""
        if self._rejected_held:
            try:
                self.rejected = _reopened(self.rejected)
                self.rejected.append_many(self._rejected_held)
                self._rejected_held = []
                publish_backlog()
            except (JournalError, OSError) as exc:
                self._journal_failed(exc)
                return False
        if not self._held:
            self.journal_error = ""
            return True
        try:
            self.journal = _reopened(self.journal)
            self.journal.append_many([u for batch, _ in self._held for u in batch])
        except (JournalError, OSError) as exc:
            self._journal_failed(exc)
            return False
        held, self._held = self._held, []
        log.warning(
            "mirror: the journal is writable again; %d held units journaled", self.held_units
        )
        self.held_units = self.held_bytes = 0
        self.journal_error = ""
        for units, reason in held:
            self._journaled(units, reason)
        stalled, self.stalled = self.stalled, set()
        for session in stalled:
            session.journal_caught_up()  # paused in ClientSession._emit
        return True

    def _spill_all(self, reason: str) -> None:
        """Every queued unit of every session to the journal, in commit order."""
        units: list[Unit] = []
        for sm in self.sessions.values():
            units.extend(sm.take_all())
        units.sort(key=lambda u: u.order)
        self.journal_units(units, reason)
        for sm in self.sessions.values():
            sm.wake()

    def reject(self, unit: Unit) -> None:
        metrics.MIRROR_FAILURES.labels("rejected").inc()
        if not self._rejected_held:
            try:
                self.rejected.append(unit)
                return
            except (JournalError, OSError) as exc:
                self._journal_failed(exc)
        # Retried with the held units by the replay loop (live mirroring goes on).
        self._rejected_held.append(unit)
        self._wake.set()
        publish_backlog()

    def apply_started(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def apply_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def _replay_loop(self) -> None:
        from proxy.mirror.replay import replay_pending

        delay = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            if not self.journal_held():
                delay = 1.0
                continue
            if not self.journaling and self.journal.pending() == 0:
                continue
            self.journaling = True
            await self._idle.wait()  # applies in flight finish (or fail) first
            if not self.direct:
                self._spill_all(self.journal_reason)
                self.direct = True
            if self.parked:
                continue  # kept for a revert (unpark wakes this loop)
            try:
                n = await replay_pending(
                    self.journal,
                    self.connection,
                    self.divergences,
                    self.reject,
                    self.config.apply_timeout,
                )
            except MirrorUnavailable as exc:
                self.last_error = str(exc)
                publish_backlog()
                delay = min(delay * 2, 5.0)
                continue
            publish_backlog()
            if n:
                log.info("mirror: replayed %d journaled units", n)
            delay = 0.5
            if self.journal.pending() == 0 and not self._held:  # no await since replay saw it
                self.journaling = False
                self.direct = False
                self._pulse()
                log.info("mirror: journal drained, live mirroring resumed")

    def status(self) -> dict[str, Any]:
        return {
            "mirror_queue_depth": self.queued_units,
            "mirror_queue_bytes": self.queued_bytes,
            "journaling": self.journaling,
            "journal_backlog_units": self.journal.pending(),
            "journal_held_units": self.held_total,
            "journal_error": self.journal_error,
            "rejected_units": self.rejected.pending(),
            "mirror_sessions": len(self.sessions),
            "mirror_inflight": self.inflight,
            "commit_order": self.order,
            "mirror_watermark": self.watermark,
            "last_mirror_error": self.last_error,
            "catalog_tables": len(self.pinner.catalog.tables),
            "catalog_error": self.catalog_error,
            "sequences_synced_at": self.sequences_synced_at,
            "sequences_error": self.sequences_error,
            "parked": self.parked,
        }
