"""The control store's fleet barrier: its column appears on stores created before it,
and instances are waited for until each says it is quiet for the epoch."""

from __future__ import annotations

import asyncio

import pytest

from proxy.control.store import ControlStore
from proxy.settings import parse_dsn
from tests.integration.conftest import ControlDb

pytestmark = pytest.mark.integration


def test_barrier_column_added_to_an_older_store_and_used(control_db: ControlDb) -> None:
    async def run() -> None:
        dsn = parse_dsn(control_db.cli_dsn)
        store = await ControlStore.connect(dsn)
        await store.conn.execute("ALTER TABLE shadowproxy.instances DROP COLUMN quiesced_epoch")
        await store.close()

        store = await ControlStore.connect(dsn)  # an older store: the column comes back
        try:
            for name in ("a:1", "b:2"):
                await store.conn.execute(
                    "INSERT INTO shadowproxy.instances (instance, mode, epoch, poll_interval,"
                    " started_at) VALUES ($1, 'write-new', 7, 2, now())",
                    name,
                )
            assert await store.not_quiesced(7) == ["a:1", "b:2"]
            await store.mark_quiesced("a:1", 7)
            assert await store.not_quiesced(7) == ["b:2"]
            await store.mark_quiesced("b:2", 7)
            assert await store.not_quiesced(7) == []
            await store.mark_quiesced("b:2", 3)  # an older barrier never goes backwards
            assert await store.not_quiesced(7) == []
            await store.conn.execute("UPDATE shadowproxy.instances SET stopped_at = now()")
            assert await store.not_quiesced(8) == []  # stopped instances are not waited for
        finally:
            await store.close()

    asyncio.run(run())
