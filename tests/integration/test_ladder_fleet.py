"""The whole ladder under load, across a fleet: up to new-only and back, several times.

Three ``shadowproxy serve`` instances share one control database.  pgbench
(tpcb-like, a different query mode through each instance) and an asyncpg
read/write mix (autocommit inserts read back at once, read-modify-write
transactions) run through all of them while the test walks
dual-write -> ... -> new-only and back down, twice, then jumps from new-only
straight back to dual-write.  Every ``mode set`` must be acknowledged by all
three instances, no client sees an error, and afterwards the two stores hold
the same rows, every column included, checked on the databases.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, PgPair, ProxyProcess, pg_dsn
from tests.integration.conftest import ControlDb
from tests.integration.test_control_fleet import cli, cli_env, wait_for
from tests.integration.test_pgbench import assert_pgbench_tables_same, pgbench

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UP = ["shadow-read", "read-new", "write-new", "new-only"]
DOWN = ["write-new", "read-new", "shadow-read", "dual-write"]
WALK = [*UP, *DOWN, *UP, "dual-write", *UP[:3], *DOWN[1:]]


class Mix:
    """asyncpg clients spread over the instances; every error is kept."""

    def __init__(self, dsns: list[str], clients: int) -> None:
        self.dsns = dsns
        self.clients = clients
        self.errors: list[str] = []
        self.ops = 0
        self.stop = threading.Event()

    async def _client(self, n: int) -> None:
        conn = await asyncpg.connect(self.dsns[n % len(self.dsns)])
        try:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                key = n * 1_000_000 + i
                try:
                    rid = await conn.fetchval(
                        "INSERT INTO mix (k, v) VALUES ($1, $2) RETURNING id", key, f"c{n}"
                    )
                    got = await conn.fetchval("SELECT k FROM mix WHERE id = $1", rid)
                    if got != key:  # read-your-writes, whichever store serves reads
                        self.errors.append(f"client {n}: row {rid} read back as {got}")
                    async with conn.transaction():
                        v = await conn.fetchval(
                            "SELECT n FROM counters WHERE id = $1 FOR UPDATE", n % 4
                        )
                        await conn.execute(
                            "UPDATE counters SET n = $1, at = now() WHERE id = $2", v + 1, n % 4
                        )
                    self.ops += 1
                except Exception as exc:  # every client-visible failure counts
                    self.errors.append(f"client {n}: {exc!r}")
                    return
        finally:
            await conn.close()

    def run(self) -> None:
        async def main() -> None:
            await asyncio.gather(*(self._client(n) for n in range(self.clients)))

        asyncio.run(main())


def test_fleet_walks_the_ladder_under_load(
    pg_pair: PgPair, control_db: ControlDb, proxy_factory: Any, tmp_path: Path
) -> None:
    for db in (pg_pair.old, pg_pair.new):
        pgbench(PG_PORT, db, "-i", "-s", "2", "-q")
    pg_pair.run_both(
        "CREATE TABLE mix (id bigserial PRIMARY KEY, k bigint, v text,"
        " at timestamptz DEFAULT now(), u uuid DEFAULT gen_random_uuid());"
        "CREATE TABLE counters (id int PRIMARY KEY, n int, at timestamptz);"
        "INSERT INTO counters SELECT g, 0, NULL FROM generate_series(0, 3) g"
    )
    fleet: list[ProxyProcess] = [
        proxy_factory(
            pg_dsn(pg_pair.old),
            pg_dsn(pg_pair.new),
            control_dsn=control_db.proxy_dsn,
            control_poll_interval="0.5",
            state_file=str(tmp_path / f"state-{i}" / "mode.json"),
            shadow_read_fraction="0.2",
        )
        for i in range(3)
    ]
    env = cli_env(pg_pair, control_db)
    wait_for("heartbeats", lambda: all(p.status()["control"]["last_heartbeat"] for p in fleet))

    duration = 4 + len(WALK)  # seconds: the walk takes about one per step
    benches = [
        subprocess.Popen(
            [
                "pgbench", "-h", PG_HOST, "-p", str(p.port), "-U", PG_USER,
                "-M", qmode, "-c", "3", "-j", "1", "-T", str(duration), pg_pair.old,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p, qmode in zip(fleet, ["prepared", "extended", "simple"], strict=True)
    ]  # fmt: skip
    mix = Mix([p.dsn(pg_pair.old) for p in fleet], clients=6)
    mixer = threading.Thread(target=mix.run)
    mixer.start()
    try:
        time.sleep(1.5)
        for step, mode in enumerate(WALK, 2):
            flip = cli(env, "mode", "set", mode, "--reason", "ladder", "--force", "--timeout", "15")
            assert flip.returncode == 0, f"{mode}: {flip.stdout}{flip.stderr}"
            assert "applied (3)" in flip.stdout and "NOT applied" not in flip.stdout, flip.stdout
            assert f"epoch {step}" in flip.stdout, flip.stdout
            assert not mix.errors, mix.errors
            time.sleep(0.7)
    finally:
        mix.stop.set()
        mixer.join(timeout=60)
        outs = [b.communicate(timeout=120) for b in benches]
    for b, (out, err) in zip(benches, outs, strict=True):
        assert b.returncode == 0, out + err
        assert "number of failed transactions: 0" in out, out
    assert not mix.errors, mix.errors
    assert mix.ops > 50

    for p in fleet:
        assert p.status()["mode"] == "dual-write"
        p.wait_mirror_idle(timeout=90)
    assert_pgbench_tables_same(pg_pair)
    pg_pair.assert_same(
        "pgbench_history",
        columns="tid, bid, aid, delta, mtime",
        order="tid, bid, aid, delta, mtime",
    )
    count, _ = pg_pair.assert_same("mix")
    assert count >= mix.ops
    pg_pair.assert_same("counters")
    moved = sum(
        p.http("/metrics")[1].decode().count("shadowproxy_authority_switches_total{") for p in fleet
    )
    assert moved, "no session moved its writes"
    assert [e for p in fleet for e in p.divergences()] == []
