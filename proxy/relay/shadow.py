"""Shadow reads: a sample of autocommit reads also runs on the other store, compared.

How this works: in a mode with shadow reads (``shadow-read``), each session
samples its autocommit reads (SHADOW_SHADOW_READ_FRACTION).  The answers to a
sampled read are looked at on their way to the client, never changed or
delayed: column names and types from RowDescription, the row count, and a
digest of the DataRows (a sum of row hashes, order-insensitive, or a chained
hash when the statement sorts); the relay's scanner hands those rows over
without leaving its fast path.  Once the read completes, the same statement --
same text, same parameter and result formats -- goes to the other store on
the session's own shadow connection (the mirror store's credentials, the
session's settings; an extended-protocol statement is prepared there once and
bound on later samples), a Protocol that digests the answer the same way as its
bytes arrive and compares at ReadyForQuery, in a callback: no task or stream
per read.  A difference is checked again on both stores by a background task
(a write may have landed between the two reads); one that persists is a
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from proxy import metrics
from proxy.classify import read_shape, relations_of
from proxy.mirror.activity import ACTIVITY
from proxy.mirror.connection import MirrorConnection, MirrorUnavailable
from proxy.wire.pg import ProtocolError, error_fields, split_messages
from proxy.wire.pg import messages as m

if TYPE_CHECKING:
    from proxy.mirror.manager import MirrorManager
    from proxy.mirror.sequences import Endpoint

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_MAX_FINGERPRINTS = 50  # label values: the first 50 fingerprints, then "other"
_TIMEOUT = 30.0
_RECHECKS = 2  # re-reads of both stores before a difference counts
_SETTLE = 2.0  # seconds a re-check waits at most for the mirrors to catch up
# Statements a shadow connection prepares under names of its own, at most (then
# the rest are parsed on every read, as the client's unnamed statements are).
_LINK_STATEMENTS = 64

# asyncio.gather returns a list where its annotation says a tuple, and compiled
# code (setup.py) checks annotations: called through an untyped name.
_gather: Any = asyncio.gather


@dataclass(slots=True)
class Digest:
    ordered: bool
    columns: list[tuple[bytes, int]] = field(default_factory=list)  # (name, type oid)
    rows: int = 0
    acc: int = 0
    error: str = ""

    def describe(self, body: bytes) -> None:
        n = int.from_bytes(body[:2], "big")
        pos = 2
        cols = []
        for _ in range(n):
            nul = body.index(b"\0", pos)
            oid = int.from_bytes(body[nul + 7 : nul + 11], "big")
            # Types created on each store get their own OIDs: compare built-in ones only.
            cols.append((body[pos:nul], oid if oid < 16384 else 0))
            pos = nul + 19
        self.columns = cols

    def take(self, t: int, body: bytes) -> None:
        """One answer message: rows and their description digested, an error noted."""
        if t == 0x44:
            self.add(body)
        elif t == 0x54:
            self.describe(body)
        elif t == 0x45:
            self.error = error_fields(body).get("C", "error")

    def add(self, row: bytes) -> None:
        self.rows += 1
        h = hash(row)
        self.acc = hash((self.acc, h)) if self.ordered else (self.acc + h) & _MASK

    def same(self, other: Digest) -> bool:
        # An extended-protocol client may not have described its portal: its
        # answer then has no RowDescription to compare.
        return (
            self.error == other.error
            and (not self.columns or not other.columns or self.columns == other.columns)
            and self.rows == other.rows
            and self.acc == other.acc
        )

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": [c.decode("utf-8", "replace") for c, _ in self.columns],
        }


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
        self.sweeper = Sweeper()
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

    async def recheck(
        self, sr: ShadowRead, shadow: SessionShadow, prelude: tuple[str, ...]
    ) -> None:
        """Background: a difference, asked again of both stores (releases the slot)."""
        try:
            # A write may have landed between the two reads: once the mirrors have
            # applied what is committed, ask both stores again, at the same time.
            for _ in range(_RECHECKS):
                await self._settle()
                again = await _gather(self._on_read_store(sr, prelude), shadow.read(sr))
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
            shadow.close_link()
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
        link = await _Link.open(conn, prelude, self.sweeper)
        try:
            return await link.ask(sr)
        finally:
            link.close()


class Sweeper:
    """Times out the shadow reads in flight with one timer for all of them (a timer
    per read showed in the profile): a read still unanswered at a sweep after its
    deadline closes its link, which ends it as an error."""

    def __init__(self, timeout: float = _TIMEOUT) -> None:
        self.timeout = timeout
        self.links: set[_Link] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, link: _Link) -> None:
        self.links.add(link)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = perf_counter()
        for link in [li for li in self.links if now - li.sent > self.timeout]:
            link.close()  # connection_lost follows: the read ends as an error
            self.links.discard(link)
        if self.links:
            self._handle = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)


class _Link(asyncio.Protocol):
    """An open shadow connection: each answer is digested as its bytes arrive and
    handed to a callback at its ReadyForQuery -- no task, no stream per read."""

    def __init__(self, keep: object, sweeper: Sweeper) -> None:
        self.keep = keep  # the stream writer the socket came from (must stay alive)
        self.sweeper = sweeper
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.digest: Digest | None = None
        self.done: Callable[[Digest | None], None] | None = None
        self.sent = 0.0  # when the read in flight was sent
        # The client's Parse bodies prepared here, by the name they got: the other
        # store then parses and plans a sampled statement once per connection,
        # not once per read.  Names are never reused (an error drops the entry).
        self.statements: dict[bytes, str] = {}
        self.named = 0
        self.asked: bytes | None = None  # the Parse body of the named read in flight

    @classmethod
    async def open(
        cls, conn: MirrorConnection, prelude: tuple[str, ...], sweeper: Sweeper
    ) -> _Link:
        """Connect ``conn``, apply the session's settings, take its socket over."""
        try:
            await conn.connect()
            await conn.run_prelude(prelude)
            transport, keep = conn.detach()
        except BaseException:
            conn.close()
            raise
        link = cls(keep, sweeper)
        transport.set_protocol(link)
        link.connection_made(transport)
        return link

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def ask(self, sr: ShadowRead) -> asyncio.Future[Digest]:
        """``sr``'s statement once more, as a future (re-checks); fails with
        MirrorUnavailable if the connection is lost or times out."""
        fut: asyncio.Future[Digest] = asyncio.get_running_loop().create_future()
        if not self.usable:
            fut.set_exception(MirrorUnavailable("the shadow connection is closed"))
            return fut

        def done(d: Digest | None) -> None:
            if fut.done():
                return
            if d is None:
                fut.set_exception(MirrorUnavailable("the shadow connection was lost"))
            else:
                fut.set_result(d)

        self.send(self.request(sr), Digest(sr.digest.ordered), done)
        return fut

    def request(self, sr: ShadowRead) -> bytes:
        """The bytes that run ``sr``'s statement here: the client's query, or its
        Bind on this connection's own prepared copy of the client's Parse."""
        parse_body, bind_body = sr.parse_body, sr.bind_body
        if parse_body is None or bind_body is None:
            return m.query(sr.sql)
        name = self.statements.get(parse_body)
        head = b""
        if name is None:
            if self.named >= _LINK_STATEMENTS:
                return request_of(sr)
            name = f"shadowproxy_s{self.named}"
            self.named += 1
            self.statements[parse_body] = name
            head = m.parse(name, parse_body)
        self.asked = parse_body
        return (
            head
            + m.bind(name, bind_body)
            + m.DESCRIBE_PORTAL_UNNAMED
            + m.EXECUTE_UNNAMED_ALL
            + m.SYNC
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, digest: Digest, done: Callable[[Digest | None], None]) -> None:
        assert self.transport is not None and self.done is None
        self.digest, self.done = digest, done
        self.sent = perf_counter()
        self.sweeper.add(self)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            msgs, self.buf = split_messages(self.buf + data)
        except ProtocolError:
            self.close()
            return
        for t, raw in msgs:
            digest = self.digest
            if digest is None:  # nothing asked: the connection is out of step
                self.close()
                return
            if t == 0x5A:
                self._finish(digest)
            else:
                digest.take(t, raw[5:])

    def _finish(self, result: Digest | None) -> None:
        self.sweeper.links.discard(self)
        asked, self.asked = self.asked, None
        if asked is not None and result is not None and result.error:
            # The Parse may not have taken, or its plan went stale (a column
            # changed type): the next read prepares it again, under a new name.
            self.statements.pop(asked, None)
        done, self.done, self.digest = self.done, None, None
        if done is not None:
            done(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.TERMINATE)
            self.transport.close()  # connection_lost follows: a read in flight ends (None)


class SessionShadow:
    """One session's connection to the shadow store; one shadow read at a time."""

    def __init__(self, reader: ShadowReader, params: dict[str, str], session: int) -> None:
        self.reader = reader
        self.params = params
        self.session = session
        self.link: _Link | None = None
        self.prelude: tuple[str, ...] = ()  # the session settings the link carries
        self.busy = False
        self.closing = False  # the session ended: close once the read in flight is done
        self._current: tuple[ShadowRead, float, tuple[str, ...]] | None = None

    def start(self, sr: ShadowRead, prelude: tuple[str, ...]) -> None:
        """The sampled read completed on the store that answered the client: run it
        on the other one (the slot taken by ``sample`` is released at the end)."""
        link = self.link
        if link is not None and link.usable and prelude == self.prelude:
            self._send(link, sr, prelude)
        else:  # (re)open with the session's current settings
            _spawn(self._open_and_send(sr, prelude))

    def drop(self) -> None:
        """The sampled read failed on its own store: nothing to compare."""
        self.reader.abandon()
        self.busy = False

    async def _open_and_send(self, sr: ShadowRead, prelude: tuple[str, ...]) -> None:
        self.close_link()
        try:
            link = await _Link.open(
                self.reader.manager.connection(self.params), prelude, self.reader.sweeper
            )
        except (MirrorUnavailable, ProtocolError, OSError, TimeoutError) as exc:
            self.reader.count("error")
            log.info("shadow read on session %d: %s", self.session, exc)
            self.release()
            return
        self.link, self.prelude = link, prelude
        self._send(link, sr, prelude)  # also when the session has ended meanwhile

    def _send(self, link: _Link, sr: ShadowRead, prelude: tuple[str, ...]) -> None:
        self._current = (sr, perf_counter(), prelude)
        link.send(link.request(sr), Digest(sr.digest.ordered), self._answered)

    def _answered(self, theirs: Digest | None) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        sr, started, prelude = current
        ours, other = started - sr.started, perf_counter() - started
        if theirs is None:  # lost, timed out or out of step
            self.reader.count("error")
            log.info("shadow read on session %d failed: the connection was lost", self.session)
            self.close_link()
            self.release()
        elif self.reader.answered(sr, theirs, ours, other):
            self.release()
        else:
            _spawn(self.reader.recheck(sr, self, prelude))

    def read(self, sr: ShadowRead) -> asyncio.Future[Digest]:
        """The statement of ``sr`` once more on this session's link (re-checks)."""
        link = self.link
        if link is None:
            fut: asyncio.Future[Digest] = asyncio.get_running_loop().create_future()
            fut.set_exception(MirrorUnavailable("the shadow connection is closed"))
            return fut
        return link.ask(sr)

    def release(self) -> None:
        self.reader.inflight -= 1
        self.busy = False
        if self.closing:
            self.close()

    def close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def close(self) -> None:
        if self.busy:
            self.closing = True
            return
        self.close_link()


_TASKS: set[asyncio.Task[None]] = set()  # a task must be referenced until it ends


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def request_of(sr: ShadowRead) -> bytes:
    """The bytes that run ``sr``'s statement unprepared: the client's own unnamed
    Parse and Bind, or its query."""
    if sr.parse_body is not None and sr.bind_body is not None:
        return (
            m.parse("", sr.parse_body)
            + m.bind("", sr.bind_body)
            + m.DESCRIBE_PORTAL_UNNAMED
            + m.EXECUTE_UNNAMED_ALL
            + m.SYNC
        )
    return m.query(sr.sql)
