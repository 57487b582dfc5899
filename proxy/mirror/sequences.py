"""Sequences in step: the mirror store's sequences never lag the authoritative ones.

Pinned inserts write the authoritative store's keys explicitly, so the mirror
store's own sequences do not move.  This task reads every sequence on the
authoritative store and advances the mirror store's copy to at least the same
value (never backwards), every ``sequence_sync_interval`` seconds and on demand
(``POST``-free: ``/status`` shows the last run).  The day writes move to the new
store, its sequences hand out keys the old store never did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# How the sync's two long-lived connections show in pg_stat_activity.
APPLICATION_NAME = "shadowproxy-sequences"

_READ = """
SELECT schemaname, sequencename, last_value
FROM pg_sequences
WHERE last_value IS NOT NULL
"""
# Advances only: a sequence the mirror store has already moved past stays put.
# $4: headroom (in increments) added when it moves (see sync_sequences).
_ADVANCE = """
SELECT setval(
    format('%I.%I', s.schemaname, s.sequencename),
    CASE WHEN s.increment_by > 0 THEN least(s.max_value, $3 + $4 * s.increment_by) ELSE $3 END,
    true)
FROM pg_sequences s
WHERE s.schemaname = $1 AND s.sequencename = $2
  AND (s.last_value IS NULL OR s.last_value < $3)
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str | None
    database: str


async def connect_endpoint(
    end: Endpoint, timeout: float, application_name: str = "shadowproxy"
) -> Any:
    """An asyncpg connection with the proxy's own credentials for ``end``
    (``application_name`` says what it is for in pg_stat_activity)."""
    import asyncpg

    return await asyncpg.connect(
        host=end.host,
        port=end.port,
        user=end.user,
        password=end.password,
        database=end.database,
        timeout=timeout,
        server_settings={"application_name": application_name},
    )


class SequenceSync:
    """Advances ``target``'s sequences to ``source``'s values, on one connection to
    each store kept between runs (a run every couple of seconds would otherwise
    start two server processes each time, on every proxy instance); a failed run
    closes them and the next one reconnects."""

    def __init__(self, source: Endpoint, target: Endpoint, timeout: float) -> None:
        self.source = source
        self.target = target
        self.timeout = timeout
        self._src: Any = None
        self._dst: Any = None

    async def run(self, headroom: int = 0) -> int:
        """How many sequences moved.  ``headroom``: when writes move to ``target``,
        sessions still on ``source`` keep drawing keys there until their next
        transaction boundary; starting ``target``'s sequences that far ahead keeps
        the two ranges apart."""
        t = self.timeout
        try:
            if self._src is None or self._src.is_closed():
                self._src = await connect_endpoint(self.source, t, APPLICATION_NAME)
            wanted = await self._src.fetch(_READ, timeout=t)
            if not wanted:
                return 0
            if self._dst is None or self._dst.is_closed():
                self._dst = await connect_endpoint(self.target, t, APPLICATION_NAME)
            moved = 0
            for schema, name, value in wanted:
                row = await self._dst.fetchrow(_ADVANCE, schema, name, value, headroom, timeout=t)
                moved += row is not None
        except BaseException:
            self.close()
            raise
        if moved:
            log.info("mirror: advanced %d sequences on the mirror store", moved)
        return moved

    def close(self) -> None:
        for conn in (self._src, self._dst):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self._src = self._dst = None


async def sync_sequences(
    source: Endpoint, target: Endpoint, timeout: float, headroom: int = 0
) -> int:
    """One run of ``SequenceSync`` on connections of its own."""
    sync = SequenceSync(source, target, timeout)
    try:
        return await sync.run(headroom)
    finally:
        sync.close()
