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


async def connect_endpoint(end: Endpoint, timeout: float) -> Any:
    """An asyncpg connection with the proxy's own credentials for ``end``."""
    import asyncpg

    return await asyncpg.connect(
        host=end.host,
        port=end.port,
        user=end.user,
        password=end.password,
        database=end.database,
        timeout=timeout,
    )


async def sync_sequences(
    source: Endpoint, target: Endpoint, timeout: float, headroom: int = 0
) -> int:
    """Advance ``target``'s sequences to ``source``'s values; return how many moved.

    ``headroom``: when writes move to ``target``, sessions still on ``source``
    keep drawing keys there until their next transaction boundary; starting
    ``target``'s sequences that far ahead keeps the two ranges apart.
    """
    src = await connect_endpoint(source, timeout)
    try:
        wanted = await src.fetch(_READ, timeout=timeout)
    finally:
        await src.close()
    if not wanted:
        return 0
    dst = await connect_endpoint(target, timeout)
    moved = 0
    try:
        for schema, name, value in wanted:
            row = await dst.fetchrow(_ADVANCE, schema, name, value, headroom, timeout=timeout)
            moved += row is not None
    finally:
        await dst.close()
    if moved:
        log.info("mirror: advanced %d sequences on the mirror store", moved)
    return moved
