"""Shadow reads: a sample of autocommit reads also runs on the other store, compared.

How this works: in a mode with shadow reads (``shadow-read``), each session
samples its autocommit reads (SHADOW_SHADOW_READ_FRACTION).  The answers to a
sampled read are looked at on their way to the client, never changed or
delayed: column names and types from RowDescription, the row count, and a
digest of the DataRows (a sum of row hashes, order-insensitive, or a chained
hash when the statement sorts); the relay's scanner hands those rows over
without leaving its fast path.  Once the read completes, the same statement --
same text, same parameter and result formats -- goes to the other store on the
shadow connection of the session's settings (shadow_link.py: shared by every
session with the same settings, pipelined, digesting the answer the same way
as its bytes arrive), and the two digests are compared in a callback: no task
or stream per read.  A difference is checked again on both stores by a
background task (a write may have landed between the two reads); one that
persists is a
``read`` divergence with the statement's fingerprint.  Both stores' latencies
are recorded per fingerprint: the performance parity table of /status and the
``shadowproxy_shadow_read_latency_seconds`` histogram.  When too many shadow
reads are in flight, new samples are shed and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from proxy import metrics
from proxy.classify import read_shape, relations_of
from proxy.mirror.activity import ACTIVITY
from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.relay.shadow_link import Digest, Link, LinkPool, spawn
from proxy.wire.pg import ProtocolError

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager
    from proxy.mirror.sequences import Endpoint

log = logging.getLogger(__name__)

_MAX_FINGERPRINTS = 50  # label values: the first 50 fingerprints, then "other"
_RECHECKS = 2  # re-reads of both stores before a difference counts
_SETTLE = 2.0  # seconds a re-check waits at most for the mirrors to catch up

# asyncio.gather returns a list where its annotation says a tuple, and compiled
# code (setup.py) checks annotations: called through an untyped name.
_gather: Any = asyncio.gather


@dataclass(slots=True)
class ShadowRead:
    sql: str
    parse_body: bytes | None  # extended protocol: the client's Parse and Bind bodies
    bind_body: bytes | None
    digest: Digest
    seq: int = 0  # the proxy's write sequence number when the read was sampled
    fingerprint: str = ""
    started: float = field(default_factory=perf_counter)


class Parity:
    """Latency of the same statements on both stores, per fingerprint."""

    def __init__(self, stores: tuple[str, str] = ("old", "new")) -> None:
        self.samples: dict[str, tuple[deque[float], deque[float]]] = {}
        self._series: dict[str, tuple[deque[float], deque[float], Any, Any]] = {}
        self.stores = stores  # (the store that answered the client, the shadow's)

    def label(self, fp: str) -> str:
        if fp in self.samples or len(self.samples) < _MAX_FINGERPRINTS:
            return fp
        return "other"

    def record(self, fp: str, authoritative: float, other: float, stores: tuple[str, str]) -> None:
        label = self.label(fp)
        found = self._series.get(label)
        if found is None:  # metric children looked up once per fingerprint
            found = (
                deque(maxlen=500),
                deque(maxlen=500),
                metrics.SHADOW_READ_LATENCY.labels(stores[0], label),
                metrics.SHADOW_READ_LATENCY.labels(stores[1], label),
            )
            self._series[label] = found
            self.samples[label] = (found[0], found[1])
        found[0].append(authoritative)
        found[1].append(other)
        found[2].observe(authoritative)
        found[3].observe(other)

    def table(self, limit: int = 20) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for fp, (a, b) in self.samples.items():
            if not a:
                continue
            rows.append(
                {
                    "fingerprint": fp,
                    "read_store": self.stores[0],
                    "shadow_store": self.stores[1],
                    "samples": len(a),
                    "read_store_p50_ms": _pct(a, 0.5),
                    "read_store_p99_ms": _pct(a, 0.99),
                    "shadow_store_p50_ms": _pct(b, 0.5),
                    "shadow_store_p99_ms": _pct(b, 0.99),
                }
            )
        # The statements the shadow store is slowest at, relative to the read store, first.
        rows.sort(
            key=lambda r: (
                float(r["shadow_store_p99_ms"]) / max(float(r["read_store_p99_ms"]), 1e-6)
            ),
            reverse=True,
        )
        return rows[:limit]


def _pct(values: deque[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


class ShadowReader:
    """Samples, runs and compares shadow reads for every session of a proxy."""

    def __init__(
        self,
        manager: MirrorManager,
        read_store: Endpoint,
        fraction: float,
        max_inflight: int,
        divergences: Any,
    ) -> None:
        self.manager = manager
        self.read_store = read_store  # for the re-check: the store that answered the client
        self.fraction = fraction
        self.max_inflight = max_inflight
        self.inflight = 0
        self.divergences = divergences
        # (the store that answered the client, the store the shadow copy runs on)
        self.stores = ("new", "old") if manager.store_label == "old" else ("old", "new")
        self.parity = Parity(self.stores)
        self.counts: dict[str, int] = {}
        # Shadow connections, shared by sessions with the same settings (shadow_link.py).
        self.links = LinkPool(manager.connection, max_inflight)
        self._rechecks: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        # Every mirror of the process (set by the server): re-checks wait for them.
        self.managers: list[MirrorManager] = [manager]

    def roll(self) -> bool:
        """Whether the next read is sampled: asked first, so the other nine in ten
        reads cost one random number (the draw is independent of the statement)."""
        return self.fraction > 0 and self._random.random() < self.fraction

    def sample(
        self, sql: str, parse_body: bytes | None, bind_body: bytes | None
    ) -> ShadowRead | None:
        """A sampled read (``roll`` said yes), unless too many are in flight."""
        if self.inflight >= self.max_inflight:
            self.count("shed")
            return None
        self.inflight += 1
        fp, ordered = read_shape(sql)
        return ShadowRead(sql, parse_body, bind_body, Digest(ordered), ACTIVITY.seq, fp)

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        metrics.SHADOW_READS.labels(outcome).inc()

    def abandon(self) -> None:
        self.inflight -= 1

    def answered(self, sr: ShadowRead, theirs: Digest, ours: float, other: float) -> bool:
        """The other store's answer is in (``ours`` and ``other``: both stores'
        latencies): True if the two agree, the common case, decided here without a
        task; otherwise the caller re-checks (``recheck``)."""
        self.parity.record(sr.fingerprint, ours, other, self.stores)
        if sr.digest.same(theirs):
            self.count("match")
            return True
        return False

    def spawn_recheck(
        self, sr: ShadowRead, shadow: SessionShadow, prelude: tuple[str, ...]
    ) -> None:
        task = spawn(self.recheck(sr, shadow, prelude))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def recheck(
        self, sr: ShadowRead, shadow: SessionShadow, prelude: tuple[str, ...]
    ) -> None:
        """Background: a difference, asked again of both stores (releases the slot)."""
        try:
            # A write may have landed between the two reads: once the mirrors have
            # applied what is committed, ask both stores again, at the same time.
            for _ in range(_RECHECKS):
                await self._settle()
                again = await _gather(self._on_read_store(sr, prelude), shadow.read(sr, prelude))
                again_ours: Digest = again[0]
                again_theirs: Digest = again[1]
                if again_ours.same(again_theirs):
                    self.count("transient")
                    return
            tables = relations_of(sr.sql)
            if not tables or ACTIVITY.written_since(sr.seq, tables):
                # The proxy wrote those tables meanwhile (or cannot tell which tables
                # the statement reads): the stores may only be a commit apart.
                self.count("inconclusive")
                return
            self.count("mismatch")
            self.divergences.record(
                "read",
                session=shadow.session,
                fingerprint=sr.fingerprint,
                read_store=again_ours.summary(),
                shadow_store=again_theirs.summary(),
                error=again_theirs.error or None,
            )
        except (
            MirrorUnavailable,
            OSError,
            TimeoutError,
            ProtocolError,
            asyncio.IncompleteReadError,
        ) as exc:
            self.count("error")
            log.info("shadow read on session %d failed: %s", shadow.session, exc)
        finally:
            shadow.release()

    async def _settle(self) -> None:
        """Until every mirror has applied the units committed so far (bounded)."""
        deadline = perf_counter() + _SETTLE
        for manager in self.managers:
            target = manager.order
            while manager.watermark < target and perf_counter() < deadline:
                await asyncio.sleep(0.01)

    async def _on_read_store(self, sr: ShadowRead, prelude: tuple[str, ...]) -> Digest:
        end = self.read_store
        conn = MirrorConnection(end.host, end.port, end.user, end.password, end.database)
        link = await Link.open(conn, prelude, self.links.sweeper)
        try:
            return await link.ask(sr.sql, sr.parse_body, sr.bind_body, sr.digest.ordered)
        finally:
            link.close()

    def close(self) -> None:
        """The proxy stops: re-checks under way are cancelled, every shadow
        connection goes."""
        for task in self._rechecks:
            task.cancel()
        self.links.close()


class SessionShadow:
    """One session's shadow reads: one at a time, on the link its settings share."""

    def __init__(self, reader: ShadowReader, params: dict[str, str], session: int) -> None:
        self.reader = reader
        self.params = params
        self.settings = tuple(sorted(params.items()))
        self.session = session
        self.busy = False
        self._sr: ShadowRead | None = None  # the read in flight (or waiting for its link)
        self._prelude: tuple[str, ...] = ()
        self._started = 0.0

    def start(self, sr: ShadowRead, prelude: tuple[str, ...]) -> None:
        """The sampled read completed on the store that answered the client: run it
        on the other one (the slot taken by ``sample`` is released at the end)."""
        pool = self.reader.links
        key = (self.settings, prelude)
        link = pool.ready(key)
        self._prelude = prelude
        if link is not None:
            self._send(link, sr)
        else:  # opened with the session's current settings (or joined while it opens)
            self._sr = sr
            if not pool.open(key, self.params, self._opened):
                self._sr = None
                self.reader.count("shed")
                self.release()

    def drop(self) -> None:
        """The sampled read failed on its own store: nothing to compare."""
        self.reader.abandon()
        self.busy = False

    def _opened(self, link: Link | None) -> None:
        sr, self._sr = self._sr, None
        if sr is None:
            return
        if link is None or not link.usable:
            self.reader.count("error")
            self.release()
            return
        self._send(link, sr)

    def _send(self, link: Link, sr: ShadowRead) -> None:
        self._sr = sr
        self._started = perf_counter()
        request, bound = link.request(sr.sql, sr.parse_body, sr.bind_body)
        link.send(request, Digest(sr.digest.ordered), self._answered, bound)

    def _answered(self, theirs: Digest | None, other: float) -> None:
        sr, self._sr = self._sr, None
        if sr is None:
            return
        ours = self._started - sr.started
        if theirs is None:  # lost, timed out or out of step
            self.reader.count("error")
            log.info("shadow read on session %d failed: the connection was lost", self.session)
            self.release()
        elif self.reader.answered(sr, theirs, ours, other):
            self.release()
        else:
            self.reader.spawn_recheck(sr, self, self._prelude)

    def read(self, sr: ShadowRead, prelude: tuple[str, ...]) -> asyncio.Future[Digest]:
        """The statement of ``sr`` once more on this session's link (re-checks)."""
        link = self.reader.links.ready((self.settings, prelude))
        if link is None:
            fut: asyncio.Future[Digest] = asyncio.get_running_loop().create_future()
            fut.set_exception(MirrorUnavailable("the shadow connection is closed"))
            return fut
        return link.ask(sr.sql, sr.parse_body, sr.bind_body, sr.digest.ordered)

    def release(self) -> None:
        self.reader.inflight -= 1
        self.busy = False
