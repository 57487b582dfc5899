"""Interrupted runs resume and end with the same result; workers share one run.

A run is slowed down with ``--max-rows-per-second`` so it can be killed (SIGKILL, by
its pid) after some segments are checkpointed; the resumed run must report exactly
what an uninterrupted run reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.comparator.conftest import Db, compare_cli
from tests.conftest import PG_HOST, PG_PORT, PG_USER, SHADOWPROXY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 40_000
SEGMENT = ["--segment-rows", "2000"]
SEGMENTS = ROWS // 2000  # boundaries at every 2000th key: [lo, b1), ..., [b19, hi)


def seeded_pair(make_db: Callable[[str], Db], new_engine: str = "postgresql") -> tuple[Db, Db]:
    old, new = make_db("postgresql"), make_db(new_engine)
    old.run(
        "CREATE TABLE events (id int PRIMARY KEY, kind text, amount numeric(10,2))",
        f"INSERT INTO events SELECT g, 'kind ' || (g % 5), g * 0.5 FROM generate_series(1, {ROWS}) g",
    )
    new.run("CREATE TABLE events (id int PRIMARY KEY, kind text, amount decimal(10,2))")
    source = old.query("SELECT id, kind, amount FROM events ORDER BY id")
    new.many("INSERT INTO events VALUES (%s, %s, %s)", source)
    new.run(
        "DELETE FROM events WHERE id IN (1, 15000, 39999)",
        "UPDATE events SET kind = 'changed' WHERE id IN (2, 20000, 40000)",
        "INSERT INTO events VALUES (40001, 'new', 1)",
    )
    return old, new


def summary(report: dict[str, Any]) -> list[Any]:
    """A report without its timings."""
    return [
        (t["table"], t["rows_compared"], t["missing"], t["extra"], t["mismatched"], t["samples"])
        for t in report["tables"]
    ]


def start(old: Db, new: Db, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    cmd = [SHADOWPROXY, "compare", "--old", old.url, "--new", new.url, "--json"]
    cmd += ["--divergence-log", str(cwd / "d.jsonl"), "--settle-seconds", "0.2", *SEGMENT, *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def done_in_file(path: Path) -> int:
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return sum(len(t["done"]) for t in state["tables"].values())


def test_killed_run_resumes_from_its_checkpoint(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    old, new = seeded_pair(make_db, "mysql")
    expected = compare_cli(old, new, *SEGMENT, "--samples", "100", cwd=tmp_path)
    assert expected.code == 1

    checkpoint = tmp_path / "progress.json"
    slow = ["--checkpoint", str(checkpoint), "--max-rows-per-second", "8000", "--workers", "1"]
    proc = start(old, new, tmp_path, *slow)
    kill_when(proc, lambda: done_in_file(checkpoint) >= 4)
    done_before = done_in_file(checkpoint)
    assert 4 <= done_before < SEGMENTS

    resumed = compare_cli(
        old,
        new,
        *SEGMENT,
        "--checkpoint",
        str(checkpoint),
        "--resume",
        "--samples",
        "100",
        cwd=tmp_path,
    )
    assert resumed.code == 1
    assert summary(resumed.report) == summary(expected.report)
    assert done_in_file(checkpoint) == SEGMENTS

    # A checkpoint of another comparison is refused, not silently mixed in.
    other = compare_cli(
        old,
        new,
        "--segment-rows",
        "999",
        "--checkpoint",
        str(checkpoint),
        "--resume",
        cwd=tmp_path,
        check=False,
    )
    assert other.code == 2 and "different comparison" in other.stderr


@pytest.fixture
def control(make_db: Callable[[str], Db]) -> Db:
    return make_db("postgresql")


def control_rows(db: Db, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db.name) as c:
        return list(c.execute(sql).fetchall())  # type: ignore[arg-type]


def test_workers_share_a_run_through_the_control_database(
    make_db: Callable[[str], Db], control: Db, tmp_path: Path
) -> None:
    old, new = seeded_pair(make_db)
    expected = compare_cli(old, new, *SEGMENT, "--samples", "100", cwd=tmp_path)
    shared = compare_cli(
        old,
        new,
        *SEGMENT,
        "--samples",
        "100",
        "--control",
        control.url,
        "--workers",
        "3",
        "--run-id",
        "shared-1",
        "--max-rows-per-second",
        "8000",
        cwd=tmp_path,
    )
    assert summary(shared.report) == summary(expected.report)
    assert shared.report["run_id"] == "shared-1"
    workers = control_rows(
        control,
        "SELECT count(DISTINCT worker), count(*) FILTER (WHERE status = 'done'), count(*) "
        "FROM shadowproxy.compare_segments WHERE run_id = 'shared-1'",
    )
    distinct, done, total = workers[0]
    assert distinct >= 2 and done == total == SEGMENTS
    runs = control_rows(
        control,
        "SELECT identical, divergent_rows, tables, report->>'run_id' FROM shadowproxy.compare_runs",
    )
    assert runs == [(False, 7, 1, "shared-1")]


def test_killed_worker_resumes_by_run_id(
    make_db: Callable[[str], Db], control: Db, tmp_path: Path
) -> None:
    old, new = seeded_pair(make_db)
    expected = compare_cli(old, new, *SEGMENT, "--samples", "100", cwd=tmp_path)
    args = ["--control", control.url, "--run-id", "r2", "--workers", "1"]
    proc = start(old, new, tmp_path, *args, "--max-rows-per-second", "8000")

    def some_done() -> bool:
        try:
            rows = control_rows(
                control, "SELECT count(*) FROM shadowproxy.compare_segments WHERE status = 'done'"
            )
        except psycopg.Error:
            return False
        return bool(rows[0][0] >= 4)

    kill_when(proc, some_done)
    resumed = compare_cli(old, new, *SEGMENT, *args, "--resume", "--samples", "100", cwd=tmp_path)
    assert summary(resumed.report) == summary(expected.report)


def test_segments_of_a_killed_worker_are_taken_over(
    make_db: Callable[[str], Db], control: Db, tmp_path: Path
) -> None:
    """Another machine's worker dies mid-run: its claimed segment is compared again."""
    old, new = seeded_pair(make_db)
    expected = compare_cli(old, new, *SEGMENT, "--samples", "100", cwd=tmp_path)
    args = ["--control", control.url, "--run-id", "r3", "--workers", "1"]
    main = start(old, new, tmp_path, *args, "--max-rows-per-second", "8000")
    helper = start(old, new, tmp_path, *args, "--worker-only", "--max-rows-per-second", "4000")

    def helper_done_one() -> bool:
        try:
            rows = control_rows(
                control,
                "SELECT count(DISTINCT worker) FROM shadowproxy.compare_segments "
                "WHERE status = 'done'",
            )
        except psycopg.Error:
            return False
        return bool(rows[0][0] >= 2)

    kill_when(helper, helper_done_one)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 1, err[-2000:]
    assert summary(json.loads(out)) == summary(expected.report)
    done = control_rows(
        control, "SELECT count(*) FROM shadowproxy.compare_segments WHERE status = 'done'"
    )
    assert done == [(SEGMENTS,)]
