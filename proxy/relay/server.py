"""The proxy process: listener, sessions, mirror manager, admin API, shutdown.

Graceful shutdown: stop listening, ask each session to close at its next
transaction boundary, wait (bounded), close the rest, let the mirror workers
drain, and journal whatever the mirror could not apply.  Nothing queued is
dropped on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from proxy import logs, metrics
from proxy.classify import Kind
from proxy.control.admin import start_admin
from proxy.control.controller import SUPERSEDED, ModeController
from proxy.control.statefile import ModeState
from proxy.mirror.connection import send_cancel
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.manager import MirrorConfig, MirrorManager
from proxy.mirror.sequences import sync_sequences
from proxy.relay.client import ClientSession
from proxy.relay.shadow import ShadowReader
from proxy.routing import Mode, Store
from proxy.settings import Dsn, Settings

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE = 10.0


class ProxyServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.mode: Mode = settings.mode
        self.epoch = 0
        self.started = time.time()
        self.sessions: set[ClientSession] = set()
        self.cancel_keys: dict[tuple[int, bytes], ClientSession] = {}
        self.draining = False
        self._session_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.divergences = DivergenceLog(settings.divergence_log)
        # One mirror per direction: to the new store while the old one is
        # authoritative, to the old store from write-new on (parked in new-only).
        self.mirror_manager: MirrorManager | None = None
        self.reverse_manager: MirrorManager | None = None
        self.shadow_readers: dict[int, ShadowReader] = {}  # id(manager) -> its reader
        if settings.new_dsn is not None:
            self.mirror_manager = MirrorManager(
                MirrorConfig.from_settings(settings), self.divergences
            )
            self.reverse_manager = MirrorManager(
                MirrorConfig.from_settings(settings, to_old=True), self.divergences
            )
            self.reverse_manager.parked = self.mode is Mode.NEW_ONLY
        # Shadow reads: run on the mirror store, re-checked on the store that answered.
        for manager in (self.mirror_manager, self.reverse_manager):
            if manager is not None and manager.config.source is not None:
                self.shadow_readers[id(manager)] = ShadowReader(
                    manager,
                    manager.config.source,
                    settings.shadow_read_fraction,
                    settings.shadow_read_max_inflight,
                    self.divergences,
                )
        for reader in self.shadow_readers.values():
            reader.managers = [m for m in (self.mirror_manager, self.reverse_manager) if m]
        self.shadow_reader = (
            self.shadow_readers.get(id(self.mirror_manager)) if self.mirror_manager else None
        )
        # Moving the authoritative store: one preparation per target (see authority_ready).
        self._authority: dict[Store, tuple[int, float, asyncio.Future[str]]] = {}
        self.tls_context: ssl.SSLContext | None = None
        if settings.tls_cert and settings.tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
            self.tls_context = ctx
        self._counters: dict[str, dict[Kind, Any]] = {}
        for mode in Mode:
            metrics.MODE_INFO.labels(mode.value).set(1 if mode is self.mode else 0)
        metrics.MODE_EPOCH.set(self.epoch)
        # The mode comes from the control store or the state file from now on.
        control_id = f"{socket.gethostname()}:{settings.listen.port}"
        self.control = ModeController(settings, control_id, self.status, self._cannot_run)
        self.control.subscribe(self._mode_changed)
        # Every log record of the process says the mode and epoch it ran under.
        logs.bind_process_context(lambda: {"mode": self.mode.value, "epoch": self.epoch})

    def _cannot_run(self, mode: Mode) -> str | None:
        if mode is not Mode.OLD_ONLY and self.settings.new_dsn is None:
            return "SHADOW_NEW_DSN is not set on this instance"
        return None

    def _mode_changed(self, state: ModeState) -> None:
        """Sessions read ``self.mode`` at their next transaction boundary."""
        moved = state.mode.authoritative is not self.mode.authoritative
        self.mode, self.epoch = state.mode, state.epoch
        if moved and self.settings.new_dsn is not None:
            # The barrier runs whether or not a session here asks for it: the other
            # instances wait for this one to say it is quiet.
            self.authority_ready(state.mode.authoritative)
        if self.reverse_manager is not None:
            if self.mode is Mode.NEW_ONLY:
                self.reverse_manager.park()
            else:  # a revert: what new-only journaled reaches the old store first
                self.reverse_manager.unpark()
        for mode in Mode:
            metrics.MODE_INFO.labels(mode.value).set(1 if mode is self.mode else 0)
        metrics.MODE_EPOCH.set(self.epoch)

    @property
    def authoritative_dsn(self) -> Dsn:
        return self.dsn_of(self.mode.authoritative)

    def dsn_of(self, store: Store) -> Dsn:
        if store is Store.OLD:
            return self.settings.old_dsn
        assert self.settings.new_dsn is not None
        return self.settings.new_dsn

    def manager_for(self, mode: Mode) -> MirrorManager | None:
        """The mirror a session in ``mode`` records its writes for (None: none)."""
        if mode is Mode.NEW_ONLY:
            return self.reverse_manager  # parked: journaled for a revert
        if mode.mirror_store is Store.NEW:
            return self.mirror_manager
        if mode.mirror_store is Store.OLD:
            return self.reverse_manager
        return None

    def authority_ready(self, store: Store) -> asyncio.Future[str]:
        """Writes may move to ``store`` once the mirror feeding it has applied
        everything and its sequences are ahead: '' when so, else why not.  One
        preparation serves every session of an epoch (sessions that were idle move
        later on its strength); a failed one is retried after a pause.  A new epoch
        prepares again: writes went to the other store in between."""
        found = self._authority.get(store)
        if found is not None and found[0] == self.epoch:
            _, started, fut = found
            if not fut.done() or not fut.result() or time.monotonic() - started < 5.0:
                return fut
        fut = asyncio.get_running_loop().create_future()
        self._authority[store] = (self.epoch, time.monotonic(), fut)
        self.spawn(self._prepare_authority(store, fut))
        return fut

    def barrier_pending(self, store: Store) -> bool:
        """Writes are moving to ``store`` in this epoch and the barrier is not over:
        every session's next transaction waits for it, whichever store it is on."""
        found = self._authority.get(store)
        return found is not None and found[0] == self.epoch and not found[2].done()

    async def _prepare_authority(self, store: Store, fut: asyncio.Future[str]) -> None:
        feeding = self.mirror_manager if store is Store.NEW else self.reverse_manager
        why = ""
        if feeding is None:
            why = "SHADOW_NEW_DSN is not set"
        else:
            # Quiesce: sessions reaching their boundary wait (switching); the others
            # finish their transaction.  Once no transaction is open on the other
            # store and its mirror has applied everything, all of them move: no two
            # sessions of this instance ever write first on different stores (their
            # lock-step mirrors would wait on each other's row locks).
            epoch = self.epoch
            deadline = time.monotonic() + self.settings.authority_switch_timeout
            while True:
                if self.epoch != epoch:
                    why = SUPERSEDED
                    break
                busy = sum(
                    1 for s in self.sessions if s.store != store.value and not s.quiet_for_switch()
                )
                if not busy and feeding.drained():
                    break
                if time.monotonic() > deadline:
                    why = (
                        f"{busy} sessions still in a transaction"
                        if busy
                        else f"the mirror to the {store.value} store has not caught up"
                    )
                    break
                await asyncio.sleep(0.002)
            if not why:
                # Every instance of the fleet quiet too: else a session of an instance
                # that has not flipped yet and one of ours would write first on
                # different stores, and their lock-step mirrors wait on each other.
                why = await self.control.fleet_quiesced(
                    epoch, max(0.0, deadline - time.monotonic())
                )
            if not why and feeding.config.source is not None:
                try:
                    await sync_sequences(
                        feeding.config.source,
                        feeding.endpoint,
                        self.settings.mirror_apply_timeout,
                        self.settings.sequence_headroom,
                    )
                except Exception as exc:  # reported to the sessions, which stay put
                    why = f"cannot advance the {store.value} store's sequences: {exc}"
        if why and why != SUPERSEDED:
            log.warning("writes cannot move to the %s store yet: %s", store.value, why)
        fut.set_result(why)

    def statement_counters(self, store: str) -> dict[Kind, Any]:
        """Metric children bound once per store, so the hot path only calls inc()."""
        c = self._counters.get(store)
        if c is None:
            c = {k: metrics.STATEMENTS.labels(k.value, store) for k in Kind}
            self._counters[store] = c
        return c

    def next_session_id(self) -> int:
        self._session_seq += 1
        return self._session_seq

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            metrics.SESSION_ERRORS.inc()
            log.error("background task failed", exc_info=task.exception())

    def session_opened(self, s: ClientSession) -> None:
        self.sessions.add(s)
        metrics.CLIENT_SESSIONS.inc()
        metrics.CLIENT_SESSIONS_TOTAL.inc()

    def session_closed(self, s: ClientSession) -> None:
        if s in self.sessions:
            self.sessions.discard(s)
            metrics.CLIENT_SESSIONS.dec()
        self.cancel_keys.pop(s.key, None)

    def register_cancel_key(self, key: tuple[int, bytes], s: ClientSession) -> None:
        self.cancel_keys[key] = s

    def cancel(self, process_id: int, secret: bytes) -> None:
        s = self.cancel_keys.get((process_id, secret))
        if s is None:
            log.info("cancel request for an unknown key ignored")
            return
        s.forward_cancel()

    async def send_cancel(self, dsn: Dsn, process_id: int, secret: bytes) -> None:
        await send_cancel(dsn.host, dsn.port, process_id, secret, 5.0)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instance": self.instance,
            "mode": self.mode.value,
            "epoch": self.epoch,
            "uptime_seconds": round(time.time() - self.started, 3),
            "client_sessions": len(self.sessions),
            "listen": f"{self.settings.listen.host}:{self.settings.listen.port}",
            "old_store": self.settings.old_dsn.redacted(),
            "new_store": self.settings.new_dsn.redacted() if self.settings.new_dsn else None,
            "mirror_consistency": self.settings.mirror_consistency,
            "divergences": dict(self.divergences.counts),
            "recent_divergences": list(self.divergences.recent),
            "draining": self.draining,
            "control": self.control.status(),
        }
        out["sessions_by_store"] = {
            store.value: sum(1 for s in self.sessions if s.store == store.value) for store in Store
        }
        if self.mirror_manager is not None:
            out.update(self.mirror_manager.status())
        else:
            out.update(mirror_queue_depth=0, journal_backlog_units=0)
        rev = self.reverse_manager
        if rev is not None:
            out["mirror_to_old"] = rev.status()
            if not rev.parked:  # gates and alerts see both directions' backlog
                out["mirror_queue_depth"] += rev.queued_units
                out["journal_backlog_units"] += rev.journal.pending()
            out["mirror_sessions"] = out.get("mirror_sessions", 0) + len(rev.sessions)
            out["mirror_inflight"] = out.get("mirror_inflight", 0) + rev.inflight
        reader = self.shadow_reader
        if reader is not None:
            # The reader in force: once reads are served by new, shadows run on old.
            if self.mode.read_store is Store.NEW and self.reverse_manager is not None:
                reader = self.shadow_readers.get(id(self.reverse_manager), reader)
            out["shadow_reads"] = {
                "fraction": reader.fraction,
                "inflight": reader.inflight,
                "connections": len(reader.links.links),  # open on the other store
                "outcomes": dict(reader.counts),
                "parity": reader.parity.table(),
            }
        return out

    async def shutdown(self) -> None:
        self.draining = True
        for s in list(self.sessions):
            if not s.outstanding and s.status == ord("I"):
                s.shutdown_now()
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning(
                "shutdown: %d sessions still busy after %gs, ended now: %s",
                len(self.sessions),
                _SHUTDOWN_GRACE,
                "; ".join(s.describe() for s in list(self.sessions)[:20]),
            )
        for s in list(self.sessions):
            s.shutdown_now()
        await asyncio.sleep(0.05)
        for reader in self.shadow_readers.values():
            reader.close()
        for manager in (self.mirror_manager, self.reverse_manager):
            if manager is not None:
                await manager.stop()
        await self.control.stop()
        for t in list(self._tasks):
            t.cancel()
        self.divergences.close()


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    proxy = ProxyServer(settings)
    await proxy.control.start()  # the mode to serve with, before the first client
    for manager in (proxy.mirror_manager, proxy.reverse_manager):
        if manager is not None:
            manager.start()
    admin = await start_admin(
        settings.admin_listen,
        proxy.status,
        lambda: not proxy.draining,
        proxy.control,
        settings.admin_token,
    )
    listener = await loop.create_server(
        lambda: ClientSession(proxy),
        settings.listen.host,
        settings.listen.port,
        reuse_address=True,
        backlog=1024,
    )
    log.info(
        "shadowproxy listening on %s:%d (mode %s, authoritative %s, admin %s:%d)",
        settings.listen.host,
        settings.listen.port,
        proxy.mode.value,
        proxy.authoritative_dsn.redacted(),
        settings.admin_listen.host,
        settings.admin_listen.port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining sessions at their next transaction boundary")
    listener.close()
    await proxy.shutdown()
    admin.close()
    log.info("shadowproxy stopped")
