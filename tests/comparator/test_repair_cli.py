"""End to end: `shadowproxy compare --repair --apply`, then `--undo`, as a user runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from comparator.dsn import StoreDsn
from tests.comparator.test_repair_stores import (  # noqa: F401  (the fixture)
    Stores,
    _pg_pool,
    query,
    run,
    run_many,
    stores_fixture,
)
from tests.conftest import SHADOWPROXY

pytestmark = pytest.mark.integration


def url(dsn: StoreDsn) -> str:
    return f"{dsn.engine}://{dsn.user}@{dsn.host}:{dsn.port}/{dsn.database}"


def shadowproxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return subprocess.run(
        [SHADOWPROXY, "compare", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("old_engine", ["postgresql", "mysql"])
async def test_compare_repair_apply_then_undo(
    stores: Stores, old_engine: str, tmp_path: Path
) -> None:
    old, new = stores.new(old_engine), stores.new("postgresql")
    flag = "tinyint(1)" if old_engine == "mysql" else "boolean"
    run(old, [f"CREATE TABLE acct (id int PRIMARY KEY, owner varchar(20), ok {flag}, note text)"])
    run(new, ["CREATE TABLE acct (id int PRIMARY KEY, owner varchar(20), ok boolean, note text)"])
    rows = [(i, f"owner {i}", i % 2 == 0, None if i % 3 else f"n{i}") for i in range(1, 51)]
    for dsn in (old, new):
        run_many(dsn, "INSERT INTO acct VALUES (%s, %s, %s, %s)", rows)
    run(
        new,
        [
            "DELETE FROM acct WHERE id IN (1, 50)",
            "UPDATE acct SET note = 'x', ok = NOT ok WHERE id = 7",
            "INSERT INTO acct VALUES (99, 'stray', NULL, NULL)",
        ],
    )
    # A keyless table: one of two duplicate rows missing, one row extra.
    for dsn in (old, new):
        run(dsn, ["CREATE TABLE log (at date, what varchar(10))"])
        run_many(
            dsn,
            "INSERT INTO log VALUES (%s, %s)",
            [("2024-01-01", "a")] * 2 + [("2024-01-02", None)],
        )
    run(
        new,
        [
            "DELETE FROM log WHERE what = 'a'",
            "INSERT INTO log VALUES ('2024-01-01', 'a'), ('2024-01-03', 'x')",
        ],
    )
    before = query(new, "SELECT * FROM acct ORDER BY id")
    log_before = sorted(query(new, "SELECT * FROM log"), key=repr)
    undo_file = tmp_path / "undo.jsonl"
    common = ["--old", url(old), "--new", url(new), "--settle-seconds", "0"]

    dry = shadowproxy(*common, "--repair", "--json", cwd=tmp_path)
    assert dry.returncode == 1, dry.stderr  # differences found
    assert orjson.loads(dry.stdout)["repair"]["dry_run"] is True
    assert query(new, "SELECT * FROM acct ORDER BY id") == before
    assert sorted(query(new, "SELECT * FROM log"), key=repr) == log_before

    done = shadowproxy(
        *common, "--repair", "--apply", "--undo-file", str(undo_file), "--json", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    repaired: dict[str, Any] = orjson.loads(done.stdout)["repair"]
    assert repaired["totals"] == {"inserted": 3, "updated": 1, "deleted": 2, "unchanged": 0}
    assert repaired["undo_path"] == str(undo_file)
    want = [(i, o, bool(ok), n) for i, o, ok, n in query(old, "SELECT * FROM acct ORDER BY id")]
    assert query(new, "SELECT * FROM acct ORDER BY id") == want
    assert sorted(query(new, "SELECT * FROM log"), key=repr) == sorted(
        query(old, "SELECT * FROM log"), key=repr
    )

    again = shadowproxy(*common, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr  # identical now

    undone = shadowproxy(*common, "--undo", str(undo_file), cwd=tmp_path)
    assert undone.returncode == 0, undone.stderr
    assert "undo of" in undone.stdout
    assert query(new, "SELECT * FROM acct ORDER BY id") == before
    assert sorted(query(new, "SELECT * FROM log"), key=repr) == log_before
