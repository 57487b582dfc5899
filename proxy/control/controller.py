"""The ModeController: the mode this instance runs, and how it learns of changes.

With a control store (``SHADOW_CONTROL_DSN``) one background task owns one
connection: it LISTENs on ``shadowproxy_mode`` (a notification wakes it at
once), reads the mode row, applies a new epoch, heartbeats, then sleeps for
``SHADOW_CONTROL_POLL_INTERVAL`` or until the next notification, whichever
comes first; the sleep is the polling fallback for a lost notification.  When
the store is unreachable the instance keeps its last known mode (fail static),
says so in /status and in ``shadowproxy_control_store_up``, and reconnects with
a capped exponential backoff; the first read after a reconnect picks up any
change it missed.  The last mode seen is cached in the state file, so a restart
during an outage resumes it rather than ``SHADOW_MODE``.

Without a control store the state file is the truth: a change (``POST /mode``)
is written there atomically before it is applied.

Subscribers are called synchronously on the event loop when the mode changes;
sessions pick the new mode up at their next transaction boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from proxy import metrics
from proxy.control import changes, statefile
from proxy.control.changes import ChangeRefused, ChangeRequest, ChangeResult, ControlUnavailable
from proxy.control.statefile import ModeState
from proxy.control.store import ControlStore, Heartbeat
from proxy.routing import Mode
from proxy.settings import Settings

log = logging.getLogger(__name__)

Subscriber = Callable[[ModeState], None]
# Errors that mean "the control store is not usable right now" (fail static).
STORE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# A barrier given up because the mode changed again meanwhile (not a failure).
SUPERSEDED = "superseded by a newer epoch"
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


def last_logged_divergence(path: Path) -> float | None:
    """Time of the last event in a divergence log (its tail only), or None."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return float(orjson.loads(line)["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn line, or the middle of one where the tail starts
    return None


PARITY_TOP = 5  # worst fingerprints per instance carried by the heartbeat


def shadow_counts(status: dict[str, Any]) -> tuple[int, int]:
    """(shadow reads compared, mismatches) from /status.

    A read that differed once and matched on the re-check ("transient") counts
    as compared, not as a mismatch; shed and failed reads were not compared.
    """
    shadow = status.get("shadow_reads")
    if not isinstance(shadow, dict):
        return int(shadow or 0), int(status.get("shadow_mismatches", 0))
    outcomes = shadow.get("outcomes") or {}
    mismatches = int(outcomes.get("mismatch", 0))
    compared = mismatches + int(outcomes.get("match", 0)) + int(outcomes.get("transient", 0))
    return compared, mismatches


def heartbeat_from_status(
    instance: str,
    state: ModeState,
    status: dict[str, Any],
    poll: float,
    started: float,
    logged_divergence: float | None = None,
) -> Heartbeat:
    """What the instance reports, taken from its /status payload (one source of truth).

    ``logged_divergence`` is the last divergence in the log before this process
    started: a restart must not make an unresolved divergence disappear.
    """
    recent = status.get("recent_divergences") or []
    seen = [float(e.get("ts", 0.0)) for e in recent]
    if logged_divergence is not None:
        seen.append(logged_divergence)
    last = max(seen, default=None)
    reads, mismatches = shadow_counts(status)
    shadow = status.get("shadow_reads")
    parity = list((shadow.get("parity") or [])[:PARITY_TOP]) if isinstance(shadow, dict) else []
    lag_sum = metrics.REGISTRY.get_sample_value("shadowproxy_mirror_lag_seconds_sum")
    lag_count = metrics.REGISTRY.get_sample_value("shadowproxy_mirror_lag_seconds_count")
    return Heartbeat(
        instance=instance,
        mode=state.mode,
        epoch=state.epoch,
        poll_interval=poll,
        started_at=started,
        pid=os.getpid(),
        mirror_queue_depth=int(status.get("mirror_queue_depth", 0)),
        journal_backlog=int(status.get("journal_backlog_units", 0)),
        rejected_units=int(status.get("rejected_units", 0)),
        divergences={str(k): int(v) for k, v in (status.get("divergences") or {}).items()},
        last_divergence_at=last,
        shadow_reads=reads,
        shadow_mismatches=mismatches,
        mirror_lag_seconds=(lag_sum / lag_count) if lag_sum is not None and lag_count else None,
        parity=parity,
    )


class ModeController:
    def __init__(
        self,
        settings: Settings,
        instance: str,
        report: Callable[[], dict[str, Any]],
        refuse: Callable[[Mode], str | None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.poll = settings.control_poll_interval
        self.state = ModeState(settings.mode, 0)
        self._report = report  # the instance's /status payload, for heartbeats and gates
        self._refuse = refuse  # why this instance cannot run a mode (None: it can)
        self._subscribers: list[Subscriber] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._store: ControlStore | None = None
        self._wake = asyncio.Event()
        self._started = time.time()
        self._logged_divergence = last_logged_divergence(settings.divergence_log)
        self.reachable = settings.control_dsn is None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.last_heartbeat: float | None = None
        self.refused: dict[str, Any] | None = None  # an epoch this instance could not run

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Load the mode to start with; with a store, wait (bounded) for its answer."""
        saved = statefile.load_state(self.settings.state_file)
        if self.settings.control_dsn is None:
            try:
                await self._start_local(saved)
            except OSError as exc:  # the state file is this instance's memory: required
                raise statefile.StateFileError(
                    f"{self.settings.state_file}: cannot write: {exc.strerror or exc}"
                ) from None
            return
        if saved is not None and saved.configured in (None, self.settings.mode):
            # The last mode the store announced, until the store answers (fail static
            # across a restart).  An edited SHADOW_MODE wins instead: the operator's
            # way to revert an instance while the store is down.
            self._apply(saved, cache=False)
        metrics.CONTROL_STORE_UP.set(0)
        try:
            await self._connect()
            await self._sync()
        except STORE_ERRORS as exc:
            self._lost(exc)
            log.warning("control store unreachable at start; running %s", self.mode.value)
        self._spawn(self._run())

    async def _start_local(self, saved: ModeState | None) -> None:
        configured = self.settings.mode
        if saved is None:
            state = ModeState(configured, 1, None, time.time(), "SHADOW_MODE", "initial mode")
            state = replace(state, configured=configured)
            statefile.save_state(self.settings.state_file, state)
        elif saved.configured is not None and saved.configured is not configured:
            # The operator edited SHADOW_MODE since the file was written: a deliberate
            # change (audited), unlike a restart with the same configuration.
            reason = f"SHADOW_MODE changed from {saved.configured.value} to {configured.value}"
            log.warning("%s: running %s instead of %s", reason, configured.value, saved.mode.value)
            state = ModeState(
                configured, saved.epoch + 1, saved.mode, time.time(), "configuration", reason
            )
            state = replace(state, configured=configured)
            statefile.save_state(self.settings.state_file, state)
            statefile.append_audit(
                self.settings.state_file,
                {
                    "from_mode": saved.mode.value,
                    "to_mode": configured.value,
                    "epoch": state.epoch,
                    "who": "configuration",
                    "reason": reason,
                    "forced": True,
                    "gates": [],
                    "at": state.changed_at,
                },
            )
        else:
            state = saved
            if state.mode is not configured:
                log.warning(
                    "running %s (epoch %d) from the state file %s; SHADOW_MODE=%s is unchanged "
                    "since, so the last mode set at run time wins",
                    state.mode.value,
                    state.epoch,
                    self.settings.state_file,
                    configured.value,
                )
        if not self._apply(state, cache=False):
            why = self.refused["reason"] if self.refused else "refused"
            raise statefile.StateFileError(
                f"{self.settings.state_file} says {state.mode.value}, which this instance "
                f"cannot run: {why}"
            )
        metrics.CONTROL_STORE_UP.set(1)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._store is not None and not self._store.is_closed():
            # A goodbye, so `mode set` does not wait for (or blame) a stopped instance.
            with contextlib.suppress(*STORE_ERRORS):
                await asyncio.wait_for(self._store.stopped(self.instance, os.getpid()), 1.0)
        await self._close_store()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the control loop ------------------------------------------------------------

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            try:
                await self._step()
                backoff = _BACKOFF_FIRST
                delay = self.poll
            except STORE_ERRORS as exc:
                self._lost(exc)
                await self._close_store()
                delay, backoff = backoff, min(backoff * 2, _BACKOFF_MAX)
            except Exception as exc:  # top of the task: a bug must not end the control loop
                log.exception("control loop failed; retrying")
                metrics.SESSION_ERRORS.inc()
                self._lost(exc)
                await self._close_store()
                delay, backoff = backoff, min(backoff * 2, _BACKOFF_MAX)
            await self._sleep(delay)

    async def _step(self) -> None:
        """(Re)connect when needed, then one sync: read the mode, apply, heartbeat."""
        if self._store is not None and self._store.is_closed():
            log.info("control connection closed; reconnecting")
            self._store = None
        if self._store is None:
            await self._connect()
        await self._sync()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _connect(self) -> None:
        assert self.settings.control_dsn is not None
        timeout = max(1.0, min(5.0, 2 * self.poll))
        store = await ControlStore.connect(self.settings.control_dsn, timeout, role="instance")
        await store.add_listener(lambda *_: self._wake.set())
        store.conn.add_termination_listener(lambda *_: self._wake.set())
        self._store = store

    async def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(*STORE_ERRORS):
                await asyncio.wait_for(store.close(), 1.0)
            if not store.is_closed():
                store.conn.terminate()

    async def _sync(self) -> None:
        """Read the mode row, apply a new epoch, heartbeat the epoch we run."""
        store = self._store
        assert store is not None
        state = await store.read_mode()
        if state is None:  # a brand-new store: our mode becomes the fleet's
            state = await store.init_mode(self.mode, f"instance {self.instance}")
        self._reached()
        if state.epoch != self.epoch or state.mode is not self.mode:
            self._apply(state, cache=True)
        await store.heartbeat(self._heartbeat())
        self.last_heartbeat = time.time()
        metrics.CONTROL_LAST_HEARTBEAT.set(self.last_heartbeat)

    def _reached(self) -> None:
        if self.unreachable_since is not None:
            log.info("control store reachable again (epoch %d, %s)", self.epoch, self.mode.value)
        self.reachable, self.unreachable_since, self.last_error = True, None, None
        metrics.CONTROL_STORE_UP.set(1)

    def _lost(self, exc: BaseException) -> None:
        self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
        if self.reachable or self.unreachable_since is None:
            log.warning(
                "control store unreachable, keeping %s: %s", self.mode.value, self.last_error
            )
            self.unreachable_since = time.time()
        self.reachable = False
        metrics.CONTROL_STORE_UP.set(0)

    def _heartbeat(self) -> Heartbeat:
        return heartbeat_from_status(
            self.instance,
            self.state,
            self._report(),
            self.poll,
            self._started,
            self._logged_divergence,
        )

    # -- applying a state ------------------------------------------------------------

    def _apply(self, state: ModeState, cache: bool) -> bool:
        """Run ``state`` from now on; False (and nothing changes) if this instance cannot."""
        why = self._refuse(state.mode)
        if why is not None:
            if self.refused is None or self.refused["epoch"] != state.epoch:
                log.error("cannot run mode %s (epoch %d): %s", state.mode.value, state.epoch, why)
            self.refused = {"epoch": state.epoch, "mode": state.mode.value, "reason": why}
            return False
        self.refused = None
        changed = state.mode is not self.state.mode
        self.state = state
        if cache:
            try:
                cached = replace(state, configured=self.settings.mode)
                statefile.save_state(self.settings.state_file, cached)
            except OSError as exc:  # the cache is a convenience; the store is the truth
                log.warning("could not cache the mode in %s: %s", self.settings.state_file, exc)
        if changed:
            metrics.MODE_CHANGES.inc()
        log.info("running mode %s (epoch %d)", state.mode.value, state.epoch)
        for callback in list(self._subscribers):
            callback(state)
        return True

    # -- the fleet barrier for moving writes ----------------------------------------------

    async def fleet_quiesced(self, epoch: int, timeout: float) -> str:
        """Writes move to the other store (``epoch``): say this instance is quiet, then
        wait until every live instance is; '' when so, else why not.  Without a control
        store this instance is the fleet.  Its own connection: the control loop's may
        be busy (LISTEN, heartbeats)."""
        if self.settings.control_dsn is None:
            return ""
        deadline = time.monotonic() + timeout
        try:
            store = await ControlStore.connect(
                self.settings.control_dsn, max(1.0, min(5.0, timeout)), role="barrier"
            )
        except STORE_ERRORS as exc:
            return f"the control store is unreachable: {exc}"
        try:
            await store.mark_quiesced(self.instance, epoch)
            while True:
                if self.epoch != epoch:
                    return SUPERSEDED
                waiting = await store.not_quiesced(epoch)
                if not waiting:
                    return ""
                if time.monotonic() > deadline:
                    return f"instances still in a transaction or behind: {', '.join(waiting)}"
                await asyncio.sleep(0.01)
        except STORE_ERRORS as exc:
            return f"the control store is unreachable: {exc}"
        finally:
            with contextlib.suppress(*STORE_ERRORS):
                await store.close()

    # -- changes through the admin API ---------------------------------------------------

    async def request_change(self, req: ChangeRequest) -> ChangeResult:
        """Make ``req`` (POST /mode): in the control store if there is one, else locally."""
        bounds = changes.bounds_from(self.settings)
        if self.settings.control_dsn is not None:
            # Its own short connection: the control loop's one may be mid-sync.
            try:
                store = await ControlStore.connect(self.settings.control_dsn, 5.0, role="admin")
                try:
                    result = await changes.change_in_store(store, req, bounds, self.mode)
                finally:
                    await store.close()
            except STORE_ERRORS as exc:
                raise ControlUnavailable(f"{exc.__class__.__name__}: {exc}") from None
            self._wake.set()  # apply it here without waiting for the notification
            await self._applied_here(result.state.epoch, timeout=2.0)
            return result
        decision, new = changes.local_change(
            self.state, req, changes.facts_of(self._heartbeat()), bounds
        )
        if new is None:
            return ChangeResult(False, self.state, decision)
        why = self._refuse(new.mode)
        if why is not None:
            raise ChangeRefused(f"this instance cannot run {new.mode.value}: {why}")
        statefile.save_state(self.settings.state_file, new)  # durable before it takes effect
        statefile.append_audit(self.settings.state_file, changes.audit_entry(decision, new, req))
        self._apply(new, cache=False)
        return ChangeResult(True, new, decision)

    async def _applied_here(self, epoch: int, timeout: float) -> bool:
        """Wait (bounded) until this instance runs ``epoch``; the others follow by NOTIFY."""
        deadline = time.monotonic() + timeout
        while self.epoch < epoch and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.epoch >= epoch

    def history(self) -> list[dict[str, Any]]:
        return statefile.read_audit(self.settings.state_file)

    def status(self) -> dict[str, Any]:
        """The ``control`` section of /status."""
        out: dict[str, Any] = {
            "store": "control-store" if self.settings.control_dsn else "state-file",
            "reachable": self.reachable,
            "since": self.unreachable_since,
            "instance": self.instance,
            **self.state.to_json(),
            "last_heartbeat": self.last_heartbeat,
            "last_error": self.last_error,
            "poll_interval": self.poll,
        }
        if self.settings.control_dsn is not None:
            out["control_dsn"] = self.settings.control_dsn.redacted()
        else:
            out["state_file"] = str(self.settings.state_file)
        if self.refused is not None:
            out["refused"] = self.refused
        return out
