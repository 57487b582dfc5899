"""The mirror under faults: connections killed, the new store down, the proxy killed.

Each test runs real clients (psycopg) through a real ``shadowproxy serve`` and
breaks something underneath them.  What must hold every time: the clients never
notice (the old store is authoritative), nothing committed is lost on the way to
the new store (the durable journal catches what the mirror could not apply), and
once the fault is gone the two stores hold exactly the same rows.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import SHADOWPROXY, PgPair, ProxyProcess, admin_conn, pg_dsn

pytestmark = pytest.mark.fault

TABLE = "CREATE TABLE accounts (id int PRIMARY KEY, owner int NOT NULL, v int NOT NULL)"


# ------------------------------------------------------------------------- helpers


class Workload:
    """``clients`` psycopg sessions through the proxy, each running ``txns`` transactions.

    Each client owns the ids ``client * 100_000 + i``: it inserts a row per
    transaction and bumps an earlier row of its own (updates of one session only,
    so the async mirror's per-session order is enough for equality).  Every tenth
    transaction is rolled back: the mirror must never see those.
    """

    def __init__(self, dsn: str, clients: int, txns: int, first_txn: int = 0) -> None:
        self.dsn = dsn
        self.errors: list[BaseException] = []
        self.committed = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(c, first_txn, txns), daemon=True)
            for c in range(clients)
        ]

    def _client(self, client: int, first: int, txns: int) -> None:
        try:
            with psycopg.connect(self.dsn, connect_timeout=10) as conn:
                for i in range(first, first + txns):
                    row = client * 100_000 + i
                    conn.execute(
                        "INSERT INTO accounts (id, owner, v) VALUES (%s, %s, %s)",
                        (row, client, i),
                    )
                    conn.execute(
                        "UPDATE accounts SET v = v + 1 WHERE id = %s",
                        (client * 100_000 + (i * 7) % (i + 1),),
                    )
                    if i % 10 == 9:
                        conn.rollback()
                    else:
                        conn.commit()
                        with self._lock:
                            self.committed += 1
        except BaseException as exc:  # reported by join(); a thread must not die silently
            self.errors.append(exc)

    def start(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not self.running, "workload did not finish"
        assert not self.errors, f"clients saw errors: {self.errors[:3]!r}"


def metric(proxy: ProxyProcess, name: str) -> float:
    code, body = proxy.http("/metrics")
    assert code == 200
    total = 0.0
    for line in body.decode().splitlines():
        if re.match(rf"{re.escape(name)}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cli(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``shadowproxy <args>`` with the proxy's own settings (journal dir, DSNs)."""
    return subprocess.run(
        [SHADOWPROXY, *args],
        env=proxy.env,
        cwd=proxy.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def journal_status(proxy: ProxyProcess) -> dict[str, Any]:
    res = cli(proxy, "journal", "status", "--json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def assert_equal_and_clean(pair: PgPair, proxy: ProxyProcess, expected_rows: int) -> None:
    rows, _ = pair.assert_same("accounts", order="id")
    assert rows == expected_rows
    # In sync mode each mirror failure is reported once (sync_deferred); the journal
    # then keeps the commit order, so nothing else may differ.
    events = proxy.divergences()
    assert [e for e in events if e["kind"] != "sync_deferred"] == []
    assert len(events) <= 20, events


# --------------------------------------------------------------------------- tests


def test_mirror_connections_terminated_mid_workload(pg_pair: PgPair, proxy_factory: Any) -> None:
    """Killing the mirror's connections under load loses nothing and bothers no client."""
    pg_pair.run_both(TABLE)
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mirror_connect_timeout="1")
    work = Workload(proxy.dsn(pg_pair.old), clients=6, txns=300).start()

    kills = terminated = 0
    with admin_conn() as admin:
        while work.running and kills < 4:
            time.sleep(0.25)
            n = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name LIKE 'shadowproxy%%'",
                (pg_pair.new,),
            ).fetchone()
            kills += 1
            terminated += int(n[0]) if n else 0
    work.join()

    assert kills >= 3, "the workload ended before the mirror connections were killed"
    assert terminated > 0
    proxy.wait_mirror_idle(timeout=60)
    assert_equal_and_clean(pg_pair, proxy, work.committed)
    assert metric(proxy, "shadowproxy_journal_appended_units_total") > 0
    assert metric(proxy, "shadowproxy_journal_replayed_units_total") > 0
    assert proxy.status()["journaling"] is False


def test_new_store_down_then_back(cross_pair: Any, throwaway_pg: Any, proxy_factory: Any) -> None:
    """The new store crashes under load: the journal grows, then drains on its own."""
    cross_pair.run_both(TABLE)
    new_dsn = pg_dsn(cross_pair.new, port=throwaway_pg.port)
    proxy = proxy_factory(pg_dsn(cross_pair.old), new_dsn, mirror_connect_timeout="1")
    dsn = proxy.dsn(cross_pair.old)

    first = Workload(dsn, clients=4, txns=150).start()
    wait_for(lambda: first.committed >= 40, 30, "some mirrored commits")
    throwaway_pg.stop("immediate")
    assert first.running, "the workload ended before the new store went down"
    first.join()

    st = wait_for(lambda: (s := proxy.status())["journaling"] and s, 10, "journaling")
    backlog = st["journal_backlog_units"]
    assert backlog > 0
    assert st["last_mirror_error"]

    second = Workload(dsn, clients=3, txns=50, first_txn=1_000).start()
    second.join()
    st = proxy.status()
    assert st["journaling"] is True
    assert st["journal_backlog_units"] > backlog, (
        "the backlog did not grow while the store was down"
    )

    offline = journal_status(proxy)  # read-only beside the running proxy
    assert offline["pending_units"] > 0
    assert offline["pending_units"] <= st["journal_backlog_units"] + st["mirror_queue_depth"]

    throwaway_pg.start()
    proxy.wait_mirror_idle(timeout=60)
    assert_equal_and_clean(cross_pair, proxy, first.committed + second.committed)
    assert journal_status(proxy)["pending_units"] == 0
    assert proxy.status()["journaling"] is False


def test_offline_replay_by_cli(
    cross_pair: Any, throwaway_pg: Any, proxy_factory: Any, tmp_path: Any
) -> None:
    """With the proxy stopped, ``shadowproxy journal replay`` drains what it journaled."""
    cross_pair.run_both(TABLE)
    throwaway_pg.stop("immediate")
    new_dsn = pg_dsn(cross_pair.new, port=throwaway_pg.port)
    proxy = proxy_factory(pg_dsn(cross_pair.old), new_dsn, mirror_connect_timeout="1")
    work = Workload(proxy.dsn(cross_pair.old), clients=3, txns=40).start()
    work.join()
    committed = work.committed

    # While the proxy holds the journal, nothing else may write it.
    refused = cli(proxy, "journal", "replay")
    assert refused.returncode != 0
    assert "locked by another writer" in refused.stderr
    assert "Traceback" not in refused.stderr
    second = proxy_factory(
        pg_dsn(cross_pair.old), new_dsn, start=False, journal_dir=proxy.env["SHADOW_JOURNAL_DIR"]
    )
    with pytest.raises(RuntimeError, match="locked by another writer"):
        second.start()
    assert second.stop() == 1
    assert "Traceback" not in second.log()

    assert proxy.stop() == 0, proxy.log()[-2000:]
    pending = journal_status(proxy)["pending_units"]
    assert pending >= committed

    # The store is still down: replay fails cleanly and keeps every unit.
    down = cli(proxy, "journal", "replay")
    assert down.returncode != 0
    assert "new store is unavailable" in down.stderr
    assert "Traceback" not in down.stderr
    assert journal_status(proxy)["pending_units"] == pending

    throwaway_pg.start()
    done = cli(proxy, "journal", "replay")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == pending
    assert journal_status(proxy)["pending_units"] == 0
    assert_equal_and_clean(cross_pair, proxy, committed)


def test_proxy_killed_mid_transaction(pg_pair: PgPair, proxy_factory: Any) -> None:
    """SIGKILL with a transaction open and units in the journal: the doomed
    transaction exists nowhere, everything committed reaches both stores."""
    pg_pair.run_both(TABLE)
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mirror_connect_timeout="1")
    dsn = proxy.dsn(pg_pair.old)
    live = Workload(dsn, clients=2, txns=30).start()
    live.join()
    proxy.wait_mirror_idle()

    # The new store refuses connections for a while: the next units are journaled.
    with admin_conn() as admin:
        admin.execute(f"ALTER DATABASE {pg_pair.new} ALLOW_CONNECTIONS false")  # type: ignore[arg-type]
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (pg_pair.new,),
        )
    journaled = Workload(dsn, clients=2, txns=30, first_txn=1_000).start()
    journaled.join()
    wait_for(
        lambda: (s := proxy.status())["mirror_queue_depth"] == 0 and s["mirror_sessions"] == 0,
        10,
        "the mirror queue to drain into the journal",
    )
    assert proxy.status()["journal_backlog_units"] >= journaled.committed

    doomed = psycopg.connect(dsn, application_name="sp-doomed")
    doomed.execute("INSERT INTO accounts (id, owner, v) VALUES (999999, 9, 9)")
    doomed.execute("UPDATE accounts SET v = -1 WHERE id = 0")
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(timeout=10)
    with pytest.raises(psycopg.OperationalError):
        doomed.commit()
    doomed.close()
    proxy.proc = None

    # The old store dropped the session and rolled it back.
    def doomed_gone() -> bool:
        with pg_pair.connect("old") as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sp-doomed'"
            ).fetchone()
            return row is not None and row[0] == 0

    wait_for(doomed_gone, 5, "the old store to drop the killed session")
    with pg_pair.connect("old") as c:
        assert c.execute("SELECT count(*) FROM accounts WHERE id = 999999").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM accounts WHERE v = -1").fetchone() == (0,)

    with admin_conn() as admin:
        admin.execute(f"ALTER DATABASE {pg_pair.new} ALLOW_CONNECTIONS true")  # type: ignore[arg-type]
    proxy.start()  # same settings, same journal: it replays on its own
    proxy.wait_mirror_idle(timeout=60)
    assert metric(proxy, "shadowproxy_journal_replayed_units_total") >= journaled.committed
    assert_equal_and_clean(pg_pair, proxy, live.committed + journaled.committed)
    with pg_pair.connect("new") as c:
        assert c.execute("SELECT count(*) FROM accounts WHERE id = 999999").fetchone() == (0,)


def _largest_file(directory: Path) -> int:
    return max((p.stat().st_size for p in directory.rglob("*") if p.is_file()), default=0)


def test_journal_that_cannot_be_written_holds_then_stalls_never_drops(
    cross_pair: Any, throwaway_pg: Any, proxy_factory: Any
) -> None:
    """The new store is down and the journal's disk is full (a file size limit
    on the proxy: its writes past it fail with EFBIG, as on a full disk with
    ENOSPC).  Units are held in memory, then the writing sessions wait; no
    client sees an error and nothing is dropped: once the disk takes writes
    again the held units are journaled, the clients go on, and when the store
    is back both hold the same rows."""
    cross_pair.run_both(TABLE)
    throwaway_pg.stop("immediate")
    proxy = proxy_factory(
        pg_dsn(cross_pair.old),
        pg_dsn(cross_pair.new, port=throwaway_pg.port),
        mirror_connect_timeout="1",
        mirror_queue_max_units="20",
    )
    assert proxy.proc is not None
    journal_dir = Path(proxy.env["SHADOW_JOURNAL_DIR"])
    warmup = Workload(proxy.dsn(cross_pair.old), clients=1, txns=5).start()
    warmup.join()
    wait_for(lambda: proxy.status()["journal_backlog_units"] >= 4, 10, "the first units journaled")
    # Room for a few more units in the journal's segment, no more.
    limit = _largest_file(journal_dir) + 2000
    _, hard = resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
    try:
        work = Workload(proxy.dsn(cross_pair.old), clients=3, txns=60, first_txn=10).start()
        wait_for(lambda: proxy.status()["journal_held_units"] > 20, 30, "units held in memory")
        assert proxy.status()["journal_error"]
        assert metric(proxy, "shadowproxy_journal_write_errors_total") >= 1
        # Over the bound each writing session waits after its next commit: once
        # the held count stops moving, so does the old store.
        held = proxy.status()["journal_held_units"]
        for _ in range(40):
            time.sleep(0.5)
            now = proxy.status()["journal_held_units"]
            if now == held:
                break
            held = now
        else:
            raise AssertionError("the held units kept growing: no session waits")
        with cross_pair.connect("old") as c:
            before = c.execute("SELECT count(*) FROM accounts").fetchone()
            time.sleep(1.5)
            after = c.execute("SELECT count(*) FROM accounts").fetchone()
        assert before == after, "writes went on past the bound of held units"
        assert work.running
        assert work.errors == []
    finally:
        resource.prlimit(proxy.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    work.join()
    wait_for(lambda: proxy.status()["journal_held_units"] == 0, 10, "the held units journaled")
    assert proxy.status()["journal_error"] == ""

    throwaway_pg.start()
    proxy.wait_mirror_idle(timeout=60)
    assert_equal_and_clean(cross_pair, proxy, warmup.committed + work.committed)
