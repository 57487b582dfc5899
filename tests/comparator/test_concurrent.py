"""Under concurrent writes, differences in flight are re-checked, not reported.

A writer updates a row on the old store, then the same row on the new store a moment
later (as an asynchronous mirror does), continuously while the comparator runs.  A
batch of rows is also held in flight for a few seconds so the first pass certainly sees
them differ.  Only the planted divergences may be reported; the rows in flight must
end up counted as transient.  A second test runs a real proxy in dual-write and passes
its admin URL, so the re-check also waits for the proxy's mirror backlog to drain.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.comparator.conftest import Db, compare_cli
from tests.conftest import PG_HOST, PG_PORT, PG_USER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 20_000
IN_FLIGHT = list(range(100, 125))
HOLD = 4.0  # seconds the in-flight batch waits before reaching the new store


def connect(db: Db) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db.name, autocommit=True
    )


class DelayedWriter:
    """Writes the old store now and the new store ``lag`` seconds later, in order."""

    def __init__(self, old: Db, new: Db, lag: float) -> None:
        self.old, self.new, self.lag = old, new, lag
        self.todo: queue.Queue[tuple[float, int, int] | None] = queue.Queue()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._write_old),
            threading.Thread(target=self._write_new),
        ]

    def __enter__(self) -> DelayedWriter:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.threads[0].join()
        self.todo.put(None)
        self.threads[1].join()

    def _write_old(self) -> None:
        rng = random.Random(7)
        with connect(self.old) as c:
            while not self.stop.is_set():
                row, value = rng.randrange(1000, ROWS), rng.randrange(1_000_000)
                c.execute("UPDATE acct SET balance = %s WHERE id = %s", (value, row))
                self.todo.put((time.monotonic() + self.lag, row, value))
                time.sleep(0.005)

    def _write_new(self) -> None:
        with connect(self.new) as c:
            while (item := self.todo.get()) is not None:
                due, row, value = item
                time.sleep(max(0.0, due - time.monotonic()))
                c.execute("UPDATE acct SET balance = %s WHERE id = %s", (value, row))


def setup(make_db: Callable[[str], Db]) -> tuple[Db, Db]:
    old, new = make_db("postgresql"), make_db("postgresql")
    for db in (old, new):
        db.run(
            "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, note text)",
            f"INSERT INTO acct SELECT g, g, 'n' || g FROM generate_series(1, {ROWS}) g",
        )
    # Real divergences, never touched by the writers.
    new.run("UPDATE acct SET note = 'diverged' WHERE id = 5", "DELETE FROM acct WHERE id = 6")
    return old, new


def test_writes_in_flight_are_transient_and_real_divergences_remain(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    old, new = setup(make_db)
    in_flight = ", ".join(map(str, IN_FLIGHT))
    old.run(f"UPDATE acct SET balance = balance + 1 WHERE id IN ({in_flight})")
    catch_up = threading.Timer(
        HOLD, new.run, args=(f"UPDATE acct SET balance = balance + 1 WHERE id IN ({in_flight})",)
    )
    catch_up.start()
    try:
        with DelayedWriter(old, new, lag=0.3):
            found = compare_cli(
                old, new, "--settle-seconds", str(HOLD + 1), "--segment-rows", "2000", cwd=tmp_path
            )
    finally:
        catch_up.join()
    table = found.table("acct")
    assert found.keys("acct", "mismatched") == {(5,)}
    assert found.keys("acct", "missing") == {(6,)}
    assert table["extra"] == 0
    assert table["samples"]["mismatched"][0]["columns"] == ["note"]
    assert table["transient"] >= len(IN_FLIGHT)


def test_recheck_waits_for_the_proxy_mirror(
    make_db: Callable[[str], Db], proxy_factory: Any, tmp_path: Path
) -> None:
    old, new = make_db("postgresql"), make_db("postgresql")
    for db in (old, new):
        db.run(
            "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, note text)",
            "INSERT INTO acct SELECT g, g, 'n' || g FROM generate_series(1, 5000) g",
        )
    proxy = proxy_factory(old.url, new.url)
    stop = threading.Event()

    def write_through_proxy() -> None:
        rng = random.Random(3)
        with psycopg.connect(proxy.dsn(old.name), autocommit=True) as c:
            while not stop.is_set():
                c.execute(
                    "UPDATE acct SET balance = balance + 1 WHERE id = %s", (rng.randrange(1, 5000),)
                )

    writer = threading.Thread(target=write_through_proxy)
    writer.start()
    try:
        time.sleep(0.5)
        admin = f"http://127.0.0.1:{proxy.admin_port}"
        found = compare_cli(
            old, new, "--proxy-admin", admin, "--settle-seconds", "0.5", cwd=tmp_path
        )
    finally:
        stop.set()
        writer.join()
    assert found.report["divergent_rows"] == 0, found.report
    assert found.code == 0
