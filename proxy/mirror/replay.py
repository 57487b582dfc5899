"""Replays journaled units, in journal order, on fresh mirror connections.

Used by the proxy when the mirror store is back and by
``shadowproxy journal replay`` when no proxy runs.  A unit is acknowledged
(the cursor moves past it, durably) only after the mirror store answered it.
Each original session gets its own connection, opened fresh and given the
unit's session state (prelude) first.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy import metrics
from proxy.mirror.connection import MirrorConnection
from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.journal import Journal
from proxy.mirror.unit import Unit
from proxy.settings import Settings

_BATCH = 256


async def replay_pending(
    journal: Journal,
    connect: Callable[[dict[str, str]], MirrorConnection],
    divergences: DivergenceLog,
    reject: Callable[[Unit], None],
    apply_timeout: float,
) -> int:
    """Replay until the journal is empty; raises MirrorUnavailable if the store fails."""
    from proxy.mirror.manager import check_results

    conns: dict[int, MirrorConnection] = {}
    done = 0
    try:
        while journal.pending():
            for position, unit in journal.read_pending(_BATCH):
                conn = conns.get(unit.session_id)
                if conn is None or not conn.connected:
                    conn = connect({})
                    await conn.connect()
                    conns[unit.session_id] = conn
                results = await conn.apply(unit, apply_timeout)
                if not check_results(unit, results, divergences) and any(
                    r.error is not None or r.skipped for r in results
                ):
                    reject(unit)
                journal.ack(position)
                metrics.JOURNAL_REPLAYED.inc()
                metrics.JOURNAL_BACKLOG.set(journal.pending())
                done += 1
    finally:
        for conn in conns.values():
            conn.close()
    return done


async def replay_journal(settings: Settings) -> int:
    """``shadowproxy journal replay``: drain the journal while no proxy runs.

    The journal's lock makes this refuse (JournalLocked) beside a running proxy,
    which replays on its own as soon as the mirror store answers.
    """
    from proxy.mirror.manager import MirrorConfig, MirrorManager

    if settings.new_dsn is None:
        raise ValueError("SHADOW_NEW_DSN: required to replay the journal")
    divergences = DivergenceLog(settings.divergence_log, source="journal-replay")
    done = 0
    try:
        # The journal to the new store, then the one write-new keeps for the old store.
        for to_old in (False, True):
            config = MirrorConfig.from_settings(settings, to_old=to_old)
            if to_old and not config.journal_dir.exists():
                continue
            manager = MirrorManager(config, divergences)
            try:
                done += await replay_pending(
                    manager.journal,
                    manager.connection,
                    divergences,
                    manager.reject,
                    config.apply_timeout,
                )
            finally:
                manager.journal.close()
                manager.rejected.close()
    finally:
        divergences.close()
    return done
