"""The control store: mode, instances and audit in a PostgreSQL database (asyncpg).

Schema ``shadowproxy`` is created on first use (under an advisory lock, since
every instance of a fleet may start at once):

- ``mode``: one row, the mode every instance should run and its epoch;
- ``instances``: one row per instance (``hostname:port``), its heartbeat;
- ``audit``: every change, with the gates' state at the time;
- ``compare_runs``: written by the comparator, read by the gates.

A change bumps the epoch with a compare-and-set on the epoch the caller saw,
appends the audit row and sends ``NOTIFY shadowproxy_mode`` (payload: the
epoch), all in one transaction: listeners hear of it only once it is
committed.  Times are read as unix seconds and "now" is always the database's
clock, so liveness does not depend on the instances' clocks agreeing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from proxy.control.gates import CompareRun, Facts, InstanceFacts
from proxy.control.statefile import ModeState
from proxy.routing import Mode
from proxy.settings import Dsn

CHANNEL = "shadowproxy_mode"
APPLICATION_NAME = "shadowproxy-control"
LIVE_INTERVALS = 3  # an instance is live while its heartbeat is newer than 3 poll intervals
# An instance that stopped heartbeating without saying goodbye (crash, partition) is
# "silent" for this long: still listed, and counted as not having applied a change.
SILENT_SECONDS = 300

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS shadowproxy;
CREATE TABLE IF NOT EXISTS shadowproxy.mode (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode text NOT NULL,
    epoch bigint NOT NULL,
    previous_mode text,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text NOT NULL,
    reason text NOT NULL
);
CREATE TABLE IF NOT EXISTS shadowproxy.instances (
    instance text PRIMARY KEY,
    mode text NOT NULL,
    epoch bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    poll_interval double precision NOT NULL,
    mirror_queue_depth bigint NOT NULL DEFAULT 0,
    journal_backlog bigint NOT NULL DEFAULT 0,
    rejected_units bigint NOT NULL DEFAULT 0,
    divergences_since_start bigint NOT NULL DEFAULT 0,
    divergences jsonb NOT NULL DEFAULT '{}',
    last_divergence_at timestamptz,
    shadow_reads bigint NOT NULL DEFAULT 0,
    shadow_mismatches bigint NOT NULL DEFAULT 0,
    mirror_lag_seconds double precision,
    parity jsonb NOT NULL DEFAULT '[]',
    pid integer,
    started_at timestamptz NOT NULL,
    stopped_at timestamptz,
    quiesced_epoch bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS shadowproxy.audit (
    id bigserial PRIMARY KEY,
    from_mode text,
    to_mode text NOT NULL,
    epoch bigint NOT NULL,
    who text NOT NULL,
    reason text NOT NULL,
    forced boolean NOT NULL,
    gates jsonb NOT NULL DEFAULT '[]',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shadowproxy.compare_runs (
    id bigserial PRIMARY KEY,
    started_at timestamptz,
    finished_at timestamptz,
    identical boolean,
    divergent_rows bigint,
    tables int,
    report jsonb
);
"""

_EPOCH = "extract(epoch FROM {0})::float8 AS {0}"
_MODE_COLUMNS = f"mode, epoch, previous_mode, {_EPOCH.format('changed_at')}, changed_by, reason"


class ConcurrentChange(Exception):
    """Someone else changed the mode between our read and our write."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What an instance reports about itself at every heartbeat."""

    instance: str
    mode: Mode
    epoch: int
    poll_interval: float
    started_at: float
    pid: int
    mirror_queue_depth: int = 0
    journal_backlog: int = 0
    rejected_units: int = 0
    divergences: dict[str, int] | None = None
    last_divergence_at: float | None = None
    shadow_reads: int = 0
    shadow_mismatches: int = 0
    mirror_lag_seconds: float | None = None
    parity: list[dict[str, Any]] | None = None  # worst fingerprints: latency on both stores


def connect_kwargs(dsn: Dsn) -> dict[str, Any]:
    """asyncpg.connect() arguments for a parsed DSN (the password never goes through a URL)."""
    kw: dict[str, Any] = {"host": dsn.host, "port": dsn.port, "database": dsn.database or None}
    if dsn.user:
        kw["user"] = dsn.user
    if dsn.password is not None:
        kw["password"] = dsn.password
    params = dict(dsn.params)
    if "sslmode" in params:
        kw["ssl"] = params["sslmode"]
    return kw


def _state(row: asyncpg.Record) -> ModeState:
    previous = row["previous_mode"]
    return ModeState(
        mode=Mode(row["mode"]),
        epoch=int(row["epoch"]),
        previous=Mode(previous) if previous else None,
        changed_at=float(row["changed_at"]),
        changed_by=row["changed_by"],
        reason=row["reason"],
    )


def _run(row: asyncpg.Record | None) -> CompareRun | None:
    if row is None:
        return None
    return CompareRun(
        id=int(row["id"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        identical=row["identical"],
        divergent_rows=row["divergent_rows"],
        tables=row["tables"],
    )


class ControlStore:
    """One asyncpg connection to the control database.  Not safe for concurrent use:
    callers that share it (the ModeController) serialize with their own lock."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: Dsn, timeout: float = 5.0, role: str = "cli") -> ControlStore:
        conn = await asyncpg.connect(
            **connect_kwargs(dsn),
            timeout=timeout,
            command_timeout=timeout,
            server_settings={"application_name": f"{APPLICATION_NAME}-{role}"},
        )
        store = cls(conn)
        try:
            await store.ensure_schema()
        except BaseException:
            await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self.conn.close()

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())

    async def ensure_schema(self) -> None:
        exists = await self.conn.fetchval("SELECT to_regclass('shadowproxy.compare_runs')")
        if exists is not None:
            # A store created before the fleet barrier (see mark_quiesced) lacks its
            # column; looked up first, since ALTER TABLE locks the table even when the
            # column exists.
            missing = await self.conn.fetchval(
                "SELECT NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid ="
                " 'shadowproxy.instances'::regclass AND attname = 'quiesced_epoch')"
            )
            if missing:
                await self.conn.execute(
                    "ALTER TABLE shadowproxy.instances"
                    " ADD COLUMN IF NOT EXISTS quiesced_epoch bigint NOT NULL DEFAULT 0"
                )
            return
        async with self.conn.transaction():
            # Every instance of a fleet may start at once: CREATE ... IF NOT EXISTS
            # is not safe against itself, so creation is serialized.
            await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('shadowproxy.schema'))")
            await self.conn.execute(SCHEMA_SQL)

    # -- mode --------------------------------------------------------------------

    async def read_mode(self) -> ModeState | None:
        row = await self.conn.fetchrow(f"SELECT {_MODE_COLUMNS} FROM shadowproxy.mode")
        return _state(row) if row else None

    async def init_mode(self, mode: Mode, who: str) -> ModeState:
        """The mode row, created at epoch 1 with ``mode`` if the store is new."""
        async with self.conn.transaction():
            row = await self.conn.fetchrow(
                "INSERT INTO shadowproxy.mode (mode, epoch, changed_by, reason) "
                "VALUES ($1, 1, $2, 'initial mode') ON CONFLICT DO NOTHING "
                f"RETURNING {_MODE_COLUMNS}",
                mode.value,
                who,
            )
            if row is not None:
                await self._audit(None, mode, 1, who, "initial mode", False, [])
                return _state(row)
        state = await self.read_mode()
        assert state is not None
        return state

    async def change_mode(
        self,
        expected_epoch: int,
        target: Mode,
        who: str,
        reason: str,
        forced: bool,
        gates: Sequence[dict[str, Any]],
    ) -> ModeState:
        """Bump the epoch to ``target`` if the epoch is still ``expected_epoch``; audit; notify."""
        async with self.conn.transaction():
            row = await self.conn.fetchrow(
                "UPDATE shadowproxy.mode SET previous_mode = mode, mode = $1, epoch = epoch + 1, "
                "changed_at = now(), changed_by = $2, reason = $3 WHERE epoch = $4 "
                f"RETURNING {_MODE_COLUMNS}",
                target.value,
                who,
                reason,
                expected_epoch,
            )
            if row is None:
                raise ConcurrentChange("the mode changed meanwhile; read it again and retry")
            state = _state(row)
            await self._audit(state.previous, target, state.epoch, who, reason, forced, gates)
            await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(state.epoch))
        return state

    async def _audit(
        self,
        from_mode: Mode | None,
        to_mode: Mode,
        epoch: int,
        who: str,
        reason: str,
        forced: bool,
        gates: Sequence[dict[str, Any]],
    ) -> None:
        await self.conn.execute(
            "INSERT INTO shadowproxy.audit (from_mode, to_mode, epoch, who, reason, forced, gates)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
            from_mode.value if from_mode else None,
            to_mode.value,
            epoch,
            who,
            reason,
            forced,
            orjson.dumps(list(gates)).decode(),
        )

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            "SELECT id, from_mode, to_mode, epoch, who, reason, forced, gates::text AS gates, "
            f"{_EPOCH.format('at')} FROM shadowproxy.audit ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [{**dict(r), "gates": orjson.loads(r["gates"])} for r in reversed(rows)]

    # -- instances -----------------------------------------------------------------

    async def heartbeat(self, hb: Heartbeat) -> None:
        await self.conn.execute(
            """
            INSERT INTO shadowproxy.instances AS i (instance, mode, epoch, heartbeat_at,
                poll_interval, mirror_queue_depth, journal_backlog, rejected_units,
                divergences_since_start, divergences, last_divergence_at, shadow_reads,
                shadow_mismatches, mirror_lag_seconds, pid, started_at, parity)
            VALUES ($1, $2, $3, now(), $4, $5, $6, $7, $8, $9::jsonb, to_timestamp($10), $11,
                $12, $13, $14, to_timestamp($15), $16::jsonb)
            ON CONFLICT (instance) DO UPDATE SET mode = excluded.mode, epoch = excluded.epoch,
                heartbeat_at = now(), poll_interval = excluded.poll_interval,
                mirror_queue_depth = excluded.mirror_queue_depth,
                journal_backlog = excluded.journal_backlog,
                rejected_units = excluded.rejected_units,
                divergences_since_start = excluded.divergences_since_start,
                divergences = excluded.divergences,
                -- across restarts too: a divergence is open until a comparator run clears it
                last_divergence_at = GREATEST(i.last_divergence_at, excluded.last_divergence_at),
                shadow_reads = excluded.shadow_reads,
                shadow_mismatches = excluded.shadow_mismatches,
                mirror_lag_seconds = excluded.mirror_lag_seconds,
                parity = excluded.parity,
                pid = excluded.pid, started_at = excluded.started_at, stopped_at = NULL
            """,
            hb.instance,
            hb.mode.value,
            hb.epoch,
            hb.poll_interval,
            hb.mirror_queue_depth,
            hb.journal_backlog,
            hb.rejected_units,
            sum((hb.divergences or {}).values()),
            orjson.dumps(hb.divergences or {}).decode(),
            hb.last_divergence_at,
            hb.shadow_reads,
            hb.shadow_mismatches,
            hb.mirror_lag_seconds,
            hb.pid,
            hb.started_at,
            orjson.dumps(hb.parity or []).decode(),
        )

    async def mark_quiesced(self, instance: str, epoch: int) -> None:
        """This instance holds no transaction on the store writes are leaving (epoch)."""
        await self.conn.execute(
            "UPDATE shadowproxy.instances SET quiesced_epoch = greatest(quiesced_epoch, $2)"
            " WHERE instance = $1",
            instance,
            epoch,
        )

    async def not_quiesced(self, epoch: int) -> list[str]:
        """Live instances that have not quiesced for ``epoch`` yet."""
        rows = await self.conn.fetch(
            f"""
            SELECT instance FROM shadowproxy.instances
            WHERE quiesced_epoch < $1 AND stopped_at IS NULL
              AND heartbeat_at > now() - make_interval(secs => {LIVE_INTERVALS} * poll_interval)
            ORDER BY instance
            """,
            epoch,
        )
        return [r["instance"] for r in rows]

    async def stopped(self, instance: str, pid: int) -> None:
        """Mark a clean shutdown: no longer expected to acknowledge changes (a crashed
        instance is not marked, and stays "silent").  The row is kept for its history."""
        await self.conn.execute(
            "UPDATE shadowproxy.instances SET stopped_at = now() WHERE instance = $1 AND pid = $2",
            instance,
            pid,
        )

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance row, with ``live`` and ``heartbeat_age`` by the database's clock."""
        rows = await self.conn.fetch(
            f"""
            SELECT instance, mode, epoch, poll_interval, mirror_queue_depth, journal_backlog,
                rejected_units, divergences_since_start, divergences::text AS divergences,
                {_EPOCH.format("last_divergence_at")}, shadow_reads, shadow_mismatches,
                mirror_lag_seconds, parity::text AS parity, pid, {_EPOCH.format("started_at")},
                {_EPOCH.format("heartbeat_at")},
                extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age,
                stopped_at IS NOT NULL AS stopped,
                stopped_at IS NULL AND heartbeat_at
                    > now() - make_interval(secs => {LIVE_INTERVALS} * poll_interval) AS live,
                stopped_at IS NULL AND heartbeat_at
                    > now() - make_interval(secs => {SILENT_SECONDS}) AS recent
            FROM shadowproxy.instances ORDER BY instance
            """
        )
        return [
            {
                **dict(r),
                "divergences": orjson.loads(r["divergences"]),
                "parity": orjson.loads(r["parity"]),
            }
            for r in rows
        ]

    async def compare_runs(self) -> tuple[CompareRun | None, CompareRun | None]:
        """(latest finished run, latest finished run that found the stores identical)."""
        columns = (
            f"id, {_EPOCH.format('started_at')}, {_EPOCH.format('finished_at')}, identical, "
            "divergent_rows, tables"
        )
        latest = await self.conn.fetchrow(
            f"SELECT {columns} FROM shadowproxy.compare_runs WHERE finished_at IS NOT NULL "
            "ORDER BY finished_at DESC, id DESC LIMIT 1"
        )
        clean = await self.conn.fetchrow(
            f"SELECT {columns} FROM shadowproxy.compare_runs WHERE finished_at IS NOT NULL "
            "AND identical ORDER BY finished_at DESC, id DESC LIMIT 1"
        )
        return _run(latest), _run(clean)

    async def facts(self) -> Facts:
        latest, clean = await self.compare_runs()
        rows = await self.instances()
        return Facts(tuple(instance_facts(r) for r in rows), latest, clean)

    async def now(self) -> float:
        return float(await self.conn.fetchval("SELECT extract(epoch FROM now())::float8"))

    def add_listener(self, callback: Callable[..., Any]) -> Any:
        return self.conn.add_listener(CHANNEL, callback)


def instance_facts(row: dict[str, Any]) -> InstanceFacts:
    return InstanceFacts(
        instance=row["instance"],
        mode=Mode(row["mode"]),
        epoch=int(row["epoch"]),
        live=bool(row["live"]),
        heartbeat_age=float(row["heartbeat_age"]),
        mirror_queue_depth=int(row["mirror_queue_depth"]),
        journal_backlog=int(row["journal_backlog"]),
        rejected_units=int(row["rejected_units"]),
        divergences={str(k): int(v) for k, v in row["divergences"].items()},
        last_divergence_at=row["last_divergence_at"],
        shadow_reads=int(row["shadow_reads"]),
        shadow_mismatches=int(row["shadow_mismatches"]),
        mirror_lag_seconds=row["mirror_lag_seconds"],
        parity=tuple(row.get("parity") or ()),
    )
