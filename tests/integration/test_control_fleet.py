"""The cutover switch across a fleet: three ``shadowproxy serve`` processes, one control store.

Everything is checked from outside: each instance's /status and /metrics, the
CLI's output and exit code, the control database's tables, and what the two
stores hold after writes made through the proxies.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    SHADOWPROXY,
    PgPair,
    ProxyProcess,
    free_port,
    pg_dsn,
)
from tests.integration.conftest import ControlDb

POLL = "0.5"  # seconds: fast heartbeats, so liveness (3 intervals) is 1.5 s here


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHADOWPROXY, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def cli_env(pair: PgPair, control: ControlDb | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(SHADOW_OLD_DSN=pg_dsn(pair.old), SHADOW_NEW_DSN=pg_dsn(pair.new))
    env.update(SHADOW_CONTROL_POLL_INTERVAL=POLL, **extra)
    if control is not None:
        env["SHADOW_CONTROL_DSN"] = control.cli_dsn
    return env


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric(proxy: ProxyProcess, name: str) -> float:
    code, body = proxy.http("/metrics")
    assert code == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def insert_through(proxy: ProxyProcess, db: str, value: int) -> None:
    with psycopg.connect(proxy.dsn(db), autocommit=True) as c:
        c.execute("INSERT INTO t VALUES (%s)", (value,))


def rows(pair: PgPair, which: str) -> list[int]:
    with pair.connect(which) as c:
        return [r[0] for r in c.execute("SELECT v FROM t ORDER BY v").fetchall()]


@pytest.fixture
def fleet(
    pg_pair: PgPair, control_db: ControlDb, proxy_factory: Any, tmp_path: Path
) -> list[ProxyProcess]:
    pg_pair.run_both("CREATE TABLE t (v int PRIMARY KEY)")
    return [
        proxy_factory(
            pg_dsn(pg_pair.old),
            pg_dsn(pg_pair.new),
            control_dsn=control_db.proxy_dsn,
            control_poll_interval=POLL,
            state_file=str(tmp_path / f"state-{i}" / "mode.json"),
        )
        for i in range(3)
    ]


def test_flip_fleet_and_back(
    fleet: list[ProxyProcess], pg_pair: PgPair, control_db: ControlDb
) -> None:
    env = cli_env(pg_pair, control_db)
    wait_for(
        "3 live instances",
        lambda: (
            len(
                control_db.query(
                    "SELECT 1 FROM shadowproxy.instances WHERE heartbeat_at > now() - interval '1.5 s'"
                )
            )
            == 3
        ),
    )
    shown = cli(env, "mode")
    assert shown.returncode == 0, shown.stderr
    assert "mode: dual-write  epoch: 1" in shown.stdout
    assert shown.stdout.count(" applied") == 3

    flip = cli(env, "mode", "set", "old-only", "--reason", "pause mirroring", "--timeout", "10")
    assert flip.returncode == 0, flip.stdout + flip.stderr
    assert "dual-write -> old-only: epoch 2" in flip.stdout
    assert "applied (3)" in flip.stdout and "NOT applied" not in flip.stdout
    for p in fleet:
        st = p.status()
        assert (st["mode"], st["epoch"], st["control"]["reachable"]) == ("old-only", 2, True)
        assert metric(p, 'shadowproxy_mode_info{mode="old-only"}') == 1
        assert metric(p, "shadowproxy_mode_epoch") == 2
        assert metric(p, "shadowproxy_mode_changes_total") == 1
    insert_through(fleet[0], pg_pair.old, 1)  # a new session in old-only: not mirrored

    back = cli(env, "mode", "set", "dual-write", "--reason", "resume", "--timeout", "10")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "applied (3)" in back.stdout
    assert all(p.status()["epoch"] == 3 for p in fleet)
    insert_through(fleet[1], pg_pair.old, 2)  # dual-write again: mirrored
    fleet[1].wait_mirror_idle()
    assert rows(pg_pair, "old") == [1, 2]
    assert rows(pg_pair, "new") == [2]

    revert = cli(env, "mode", "revert", "--reason", "oops", "--timeout", "10")
    assert revert.returncode == 0 and "dual-write -> old-only: epoch 4" in revert.stdout
    wait_for(
        "instances heartbeat epoch 4",
        lambda: (
            control_db.query("SELECT count(*) FROM shadowproxy.instances WHERE epoch = 4")[0][0]
            == 3
        ),
    )

    audit = control_db.query(
        "SELECT from_mode, to_mode, epoch, reason, forced FROM shadowproxy.audit ORDER BY id"
    )
    assert [a[:3] for a in audit] == [
        (None, "dual-write", 1),
        ("dual-write", "old-only", 2),
        ("old-only", "dual-write", 3),
        ("dual-write", "old-only", 4),
    ]
    assert [a[3] for a in audit[1:]] == ["pause mirroring", "resume", "oops"]
    history = cli(env, "mode", "history")
    assert history.returncode == 0
    assert history.stdout.count("\n") == 4 and "oops" in history.stdout


def test_control_store_outage_is_fail_static(
    fleet: list[ProxyProcess], pg_pair: PgPair, control_db: ControlDb
) -> None:
    env = cli_env(pg_pair, control_db)
    wait_for("heartbeats", lambda: all(p.status()["control"]["last_heartbeat"] for p in fleet))
    # Lock the proxies out and cut their connections: the store is gone for them.
    control_db.query(f"REVOKE CONNECT ON DATABASE {control_db.name} FROM PUBLIC, {control_db.role}")
    killed = control_db.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND usename = %s",
        control_db.name,
        control_db.role,
    )
    assert len(killed) == 3

    def unreachable(p: ProxyProcess) -> Callable[[], bool]:
        return lambda: not p.status()["control"]["reachable"]

    def running(p: ProxyProcess, mode: str) -> Callable[[], bool]:
        return lambda: bool(p.status()["mode"] == mode)

    for p in fleet:
        wait_for("control unreachable", unreachable(p))
        control = p.status()["control"]
        assert control["since"] is not None and control["mode"] == "dual-write"
        assert metric(p, "shadowproxy_control_store_up") == 0
    # Still serving, in the last known mode (the write is mirrored).
    insert_through(fleet[2], pg_pair.old, 10)
    fleet[2].wait_mirror_idle()
    assert rows(pg_pair, "new") == [10]

    # The operator changes the mode meanwhile: nobody can acknowledge it.
    flip = cli(env, "mode", "set", "old-only", "--reason", "during outage", "--timeout", "2")
    assert flip.returncode == 1, flip.stdout + flip.stderr
    assert "NOT applied (3)" in flip.stdout
    assert all(p.status()["mode"] == "dual-write" for p in fleet)  # fail static

    control_db.query(f"GRANT CONNECT ON DATABASE {control_db.name} TO {control_db.role}")
    for p in fleet:  # back: they pick up the change they missed, without a notification
        wait_for("change picked up", running(p, "old-only"))
        assert p.status()["control"]["reachable"] is True
        assert metric(p, "shadowproxy_control_store_up") == 1
    shown = cli(env, "mode")
    assert "epoch: 2" in shown.stdout and shown.stdout.count(" applied") == 3

    # Restarted while the store is down: the last mode it announced, not SHADOW_MODE.
    control_db.query(f"REVOKE CONNECT ON DATABASE {control_db.name} FROM {control_db.role}")
    assert fleet[0].stop() == 0
    fleet[0].start()
    st = fleet[0].status()
    assert (st["mode"], st["epoch"], st["control"]["reachable"]) == ("old-only", 2, False)


def test_single_instance_restart_keeps_the_mode_from_the_state_file(
    pg_pair: PgPair, proxy_factory: Any, tmp_path: Path
) -> None:
    state = tmp_path / "single" / "mode.json"
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), state_file=str(state), admin_token="tok-123"
    )
    env = cli_env(pg_pair, None)
    admin = ["--admin", f"http://127.0.0.1:{proxy.admin_port}"]
    refused = cli(env, "mode", "set", "old-only", "--reason", "r", *admin, "--token", "bad")
    assert refused.returncode == 1 and "401" in refused.stderr
    flip = cli(
        env, "mode", "set", "old-only", "--reason", "stop mirror", *admin, "--token", "tok-123"
    )
    assert flip.returncode == 0, flip.stdout + flip.stderr
    assert '"mode": "old-only"' in state.read_text()

    assert proxy.stop() == 0
    proxy.start()  # same environment: SHADOW_MODE is still dual-write
    st = proxy.status()
    assert (st["mode"], st["epoch"], st["control"]["store"]) == ("old-only", 2, "state-file")
    history = cli(env, "mode", "history", *admin)
    assert "dual-write -> old-only" in history.stdout and "stop mirror" in history.stdout


def test_gates_refuse_forward_steps_unless_forced(
    pg_pair: PgPair, control_db: ControlDb, proxy_factory: Any, tmp_path: Path
) -> None:
    pg_pair.run_both("CREATE TABLE t (v int PRIMARY KEY)")
    env = cli_env(pg_pair, control_db)
    # The new store is a port nothing listens on: mirrored writes go to the journal.
    dead = free_port()
    proxy = proxy_factory(
        pg_dsn(pg_pair.old),
        pg_dsn(pg_pair.new, port=dead),
        control_dsn=control_db.proxy_dsn,
        control_poll_interval=POLL,
        state_file=str(tmp_path / "gates" / "mode.json"),
        mirror_connect_timeout="0.5",
    )
    insert_through(proxy, pg_pair.old, 1)
    wait_for(
        "journal backlog heartbeat",
        lambda: control_db.query("SELECT journal_backlog FROM shadowproxy.instances")[0][0] > 0,
    )
    refused = cli(env, "mode", "set", "shadow-read", "--reason", "next")
    assert refused.returncode == 3
    assert "gate journal failed" in refused.stderr and "--force" in refused.stderr
    forced = cli(env, "mode", "set", "shadow-read", "--reason", "accepted risk", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    report = cli(env, "report")
    assert report.returncode == 0
    assert "shadowproxy mode set dual-write" in report.stdout
    assert "**FAIL**" in report.stdout
    proxy.stop()

    forced_row = control_db.query(
        "SELECT forced, g->>'passed' FROM shadowproxy.audit, jsonb_array_elements(gates) g "
        "WHERE to_mode = 'shadow-read' AND g->>'name' = 'journal'"
    )
    assert forced_row == [(True, "false")]

    # A healthy instance up to read-new; write-new needs a clean, recent comparator run.
    healthy = proxy_factory(
        pg_dsn(pg_pair.old),
        pg_dsn(pg_pair.new),
        control_dsn=control_db.proxy_dsn,
        control_poll_interval=POLL,
        state_file=str(tmp_path / "healthy" / "mode.json"),
    )
    wait_for("healthy heartbeat", lambda: healthy.status()["control"]["last_heartbeat"] is not None)
    # The stopped instance is not live, so its journal no longer gates; the divergence
    # it logged (its mirror failed) stays open until a clean comparator run.
    step = cli(env, "mode", "set", "read-new", "--reason", "reads to new")
    assert step.returncode == 3 and "gate divergences failed" in step.stderr
    assert "gate journal" not in step.stderr
    step = cli(env, "mode", "set", "read-new", "--reason", "reads to new", "--force")
    assert step.returncode == 0, step.stdout + step.stderr  # forced through the gates
    assert healthy.status()["mode"] == "read-new"
    write_new = ("mode", "set", "write-new", "--reason", "writes to new")
    missing = cli(env, *write_new)
    assert missing.returncode == 3 and "no finished comparator run" in missing.stderr
    control_db.query(
        "INSERT INTO shadowproxy.compare_runs (started_at, finished_at, identical, divergent_rows,"
        " tables) VALUES (now() - interval '3 h', now() - interval '2 h', true, 0, 1)"
    )
    stale = cli(env, *write_new)
    assert stale.returncode == 3 and "s old (bound 3600s)" in stale.stderr
    control_db.query(
        "INSERT INTO shadowproxy.compare_runs (started_at, finished_at, identical, divergent_rows,"
        " tables) VALUES (now() - interval '2 min', now() - interval '1 min', false, 4, 1)"
    )
    dirty = cli(env, *write_new)
    assert dirty.returncode == 3 and "found 4 divergent rows" in dirty.stderr
    control_db.query(
        "INSERT INTO shadowproxy.compare_runs (started_at, finished_at, identical, divergent_rows,"
        " tables) VALUES (now(), now(), true, 0, 1)"
    )
    ok = cli(env, *write_new)  # every gate passes
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert healthy.status()["mode"] == "write-new"
    back = cli(env, "mode", "set", "dual-write", "--reason", "all the way back")
    assert back.returncode == 0 and healthy.status()["mode"] == "dual-write"

    audit = control_db.query("SELECT from_mode, to_mode, forced FROM shadowproxy.audit ORDER BY id")
    assert audit == [
        (None, "dual-write", False),
        ("dual-write", "shadow-read", True),
        ("shadow-read", "read-new", True),
        ("read-new", "write-new", False),
        ("write-new", "dual-write", False),
    ]
