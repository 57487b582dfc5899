"""Where a run keeps its progress: per table the segment boundaries, per segment its outcome.

``MemoryStore`` keeps nothing; ``FileStore`` rewrites a local JSON file (atomically)
after every finished segment; ``ControlStore`` keeps both in the control PostgreSQL
database, where several workers (processes or machines running the same command with
the same ``--run-id``) claim segments with ``FOR UPDATE SKIP LOCKED``.  A claimed
segment stays locked by its worker's open transaction until its outcome is written,
so a killed worker's segment simply becomes claimable again.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from comparator.codec import decode_key, encode_key
from comparator.dsn import StoreDsn
from comparator.sources.base import Key
from comparator.sources.postgres import pg_pool

PlanFn = Callable[[], Awaitable[list[Key]]]
Outcome = dict[str, Any]  # a segment outcome as JSON (see run.outcome_to_json)


@dataclass
class Claim:
    """A segment this worker compares now; ``finish`` records its outcome."""

    table: str
    seg: int
    finish: Callable[[Outcome], Awaitable[None]]


class CheckpointMismatch(Exception):
    """The checkpoint was written by a different comparison."""


class SegmentStore:
    """In-memory store: one process, nothing survives the run."""

    def __init__(self) -> None:
        self.bounds: dict[str, list[Key]] = {}
        self.done: dict[str, dict[int, Outcome]] = {}
        self._claimed: dict[str, set[int]] = {}
        self._lock = asyncio.Lock()

    async def open(self, fingerprint: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None

    async def plan(self, table: str, make: PlanFn) -> list[Key]:
        async with self._lock:
            if table not in self.bounds:
                self.bounds[table] = await make()
                self.done.setdefault(table, {})
                await self._save()
            return self.bounds[table]

    def segments(self, table: str) -> int:
        return len(self.bounds[table]) + 1

    @asynccontextmanager
    async def claim(self, table: str) -> AsyncIterator[Claim | None]:
        """The next segment to compare (None when there is none left); released on exit."""
        claimed = self._claimed.setdefault(table, set())
        done = self.done.setdefault(table, {})
        seg = next(
            (s for s in range(self.segments(table)) if s not in done and s not in claimed), None
        )
        if seg is None:
            yield None
            return
        claimed.add(seg)

        async def finish(outcome: Outcome) -> None:
            async with self._lock:
                done[seg] = outcome
                await self._save()

        try:
            yield Claim(table, seg, finish)
        finally:
            claimed.discard(seg)

    async def remaining(self, table: str) -> int:
        """Segments of the table without an outcome yet (claimed ones included)."""
        return self.segments(table) - len(self.done.get(table, {}))

    async def outcomes(self, table: str) -> dict[int, Outcome]:
        return self.done.get(table, {})

    async def _save(self) -> None:
        return None


class FileStore(SegmentStore):
    """A local JSON checkpoint, rewritten atomically after each finished segment."""

    def __init__(self, path: Path, resume: bool) -> None:
        super().__init__()
        self.path = path
        self.resume = resume
        self.fingerprint: dict[str, Any] = {}

    async def open(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        if not (self.resume and self.path.exists()):
            return
        state = orjson.loads(self.path.read_bytes())
        if state.get("fingerprint") != fingerprint:
            raise CheckpointMismatch(
                f"{self.path}: written by a different comparison (stores, tables or tuning)"
            )
        for table, entry in state["tables"].items():
            self.bounds[table] = [decode_key(k) for k in entry["bounds"]]
            self.done[table] = {int(s): o for s, o in entry["done"].items()}

    async def _save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "tables": {
                t: {
                    "bounds": [encode_key(k) for k in self.bounds[t]],
                    "done": {str(s): o for s, o in self.done.get(t, {}).items()},
                }
                for t in self.bounds
            },
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(state))
        os.replace(tmp, self.path)


_DDL = """
CREATE SCHEMA IF NOT EXISTS shadowproxy;
CREATE TABLE IF NOT EXISTS shadowproxy.compare_tables (
    run_id text NOT NULL,
    table_name text NOT NULL,
    fingerprint jsonb,
    bounds jsonb,
    PRIMARY KEY (run_id, table_name)
);
CREATE TABLE IF NOT EXISTS shadowproxy.compare_segments (
    run_id text NOT NULL,
    table_name text NOT NULL,
    seg int NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    worker text,
    finished_at timestamptz,
    outcome jsonb,
    PRIMARY KEY (run_id, table_name, seg)
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


async def ensure_control_schema(conn: asyncpg.Connection) -> None:
    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs: serialize.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('shadowproxy.compare'))")
        await conn.execute(_DDL)


class ControlStore(SegmentStore):
    """Segments shared by every worker of one run, in the control database."""

    def __init__(self, dsn: StoreDsn, run_id: str, pool_size: int) -> None:
        super().__init__()
        self.dsn = dsn
        self.run_id = run_id
        self.pool_size = pool_size
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.fingerprint: dict[str, Any] = {}

    async def open(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.pool = await pg_pool(self.dsn, self.pool_size)
        async with self.pool.acquire() as conn:
            await ensure_control_schema(conn)

    async def close(self) -> None:
        await self.pool.close()

    async def plan(self, table: str, make: PlanFn) -> list[Key]:
        async with self.pool.acquire() as conn, conn.transaction():
            fp = orjson.dumps(self.fingerprint).decode()
            await conn.execute(
                "INSERT INTO shadowproxy.compare_tables (run_id, table_name, fingerprint) "
                "VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
                self.run_id,
                table,
                fp,
            )
            # The first worker computes the boundaries; the others wait on this row lock.
            row = await conn.fetchrow(
                "SELECT fingerprint, bounds FROM shadowproxy.compare_tables "
                "WHERE run_id = $1 AND table_name = $2 FOR UPDATE",
                self.run_id,
                table,
            )
            assert row is not None
            if orjson.loads(row["fingerprint"]) != self.fingerprint:
                raise CheckpointMismatch(
                    f"run {self.run_id}: table {table} was planned by a different comparison"
                )
            if row["bounds"] is not None:
                bounds = [decode_key(k) for k in orjson.loads(row["bounds"])]
            else:
                bounds = await make()
                await conn.execute(
                    "UPDATE shadowproxy.compare_tables SET bounds = $3::jsonb "
                    "WHERE run_id = $1 AND table_name = $2",
                    self.run_id,
                    table,
                    orjson.dumps([encode_key(k) for k in bounds]).decode(),
                )
                await conn.executemany(
                    "INSERT INTO shadowproxy.compare_segments (run_id, table_name, seg) "
                    "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    [(self.run_id, table, s) for s in range(len(bounds) + 1)],
                )
        self.bounds[table] = bounds
        return bounds

    @asynccontextmanager
    async def claim(self, table: str) -> AsyncIterator[Claim | None]:
        async with self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                seg = await conn.fetchval(
                    "SELECT seg FROM shadowproxy.compare_segments "
                    "WHERE run_id = $1 AND table_name = $2 AND status = 'pending' "
                    "ORDER BY seg LIMIT 1 FOR UPDATE SKIP LOCKED",
                    self.run_id,
                    table,
                )

                async def finish(outcome: Outcome) -> None:
                    # On the claiming connection, inside the transaction holding the lock.
                    await conn.execute(
                        "UPDATE shadowproxy.compare_segments SET status = 'done', "
                        "outcome = $4::jsonb, worker = $5, finished_at = now() "
                        "WHERE run_id = $1 AND table_name = $2 AND seg = $3",
                        self.run_id,
                        table,
                        seg,
                        orjson.dumps(outcome).decode(),
                        self.worker,
                    )

                yield None if seg is None else Claim(table, int(seg), finish)
            except BaseException:
                await tx.rollback()
                raise
            else:
                await tx.commit()

    async def remaining(self, table: str) -> int:
        async with self.pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM shadowproxy.compare_segments "
                    "WHERE run_id = $1 AND table_name = $2 AND status <> 'done'",
                    self.run_id,
                    table,
                )
            )

    async def outcomes(self, table: str) -> dict[int, Outcome]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seg, outcome FROM shadowproxy.compare_segments "
                "WHERE run_id = $1 AND table_name = $2 AND status = 'done'",
                self.run_id,
                table,
            )
        return {int(r["seg"]): orjson.loads(r["outcome"]) for r in rows}
