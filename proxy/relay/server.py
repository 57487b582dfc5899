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
from proxy.control.controller import ModeController
from proxy.control.statefile import ModeState
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.manager import MirrorConfig, MirrorManager
from proxy.relay.client import ClientSession
from proxy.relay.shadow import ShadowReader
from proxy.routing import Mode, Store
from proxy.settings import Dsn, Settings
from proxy.wire.pg import messages as m

log = logging.getLogger(__name__)

_SHUTDOWN_GRACE = 10.0


# The modes the relay implements per session today (see README, "The mode ladder").
RUNNABLE = (Mode.OLD_ONLY, Mode.DUAL_WRITE, Mode.SHADOW_READ, Mode.READ_NEW)


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
        self.mirror_manager: MirrorManager | None = None
        if settings.new_dsn is not None:
            self.mirror_manager = MirrorManager(
                MirrorConfig.from_settings(settings), self.divergences
            )
        # Shadow reads (shadow-read mode): run on the mirror store, re-checked on the old.
        self.shadow_reader: ShadowReader | None = None
        if self.mirror_manager is not None and self.mirror_manager.config.source is not None:
            self.shadow_reader = ShadowReader(
                self.mirror_manager,
                self.mirror_manager.config.source,
                settings.shadow_read_fraction,
                settings.shadow_read_max_inflight,
                self.divergences,
            )
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
        if mode not in RUNNABLE:
            # Reads served by the new store and the authoritative switch are not built
            # into the relay yet: refusing keeps an SRE from believing otherwise.
            return f"this build runs {', '.join(m.value for m in RUNNABLE)} only"
        return None

    def _mode_changed(self, state: ModeState) -> None:
        """Sessions read ``self.mode`` at their next transaction boundary."""
        self.mode, self.epoch = state.mode, state.epoch
        for mode in Mode:
            metrics.MODE_INFO.labels(mode.value).set(1 if mode is self.mode else 0)
        metrics.MODE_EPOCH.set(self.epoch)

    @property
    def authoritative_dsn(self) -> Dsn:
        if self.mode.authoritative is Store.OLD:
            return self.settings.old_dsn
        assert self.settings.new_dsn is not None
        return self.settings.new_dsn

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
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(dsn.host, dsn.port), 5.0)
            w.write(m.cancel_request(process_id, secret))
            await w.drain()
            w.close()
        except (TimeoutError, OSError) as exc:
            log.warning("could not forward a cancel request: %s", exc)

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
        if self.mirror_manager is not None:
            out.update(self.mirror_manager.status())
        else:
            out.update(mirror_queue_depth=0, journal_backlog_units=0)
        if self.shadow_reader is not None:
            out["shadow_reads"] = {
                "fraction": self.shadow_reader.fraction,
                "inflight": self.shadow_reader.inflight,
                "outcomes": dict(self.shadow_reader.counts),
                "parity": self.shadow_reader.parity.table(),
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
        for s in list(self.sessions):
            s.shutdown_now()
        await asyncio.sleep(0.05)
        if self.mirror_manager is not None:
            await self.mirror_manager.stop()
        await self.control.stop()
        for t in list(self._tasks):
            t.cancel()
        self.divergences.close()


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    proxy = ProxyServer(settings)
    await proxy.control.start()  # the mode to serve with, before the first client
    if proxy.mirror_manager is not None:
        proxy.mirror_manager.start()
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
