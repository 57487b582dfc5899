"""Keyless tables (multisets), the command line contract, metrics and the divergence log."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.comparator.conftest import Db, compare_cli
from tests.conftest import SHADOWPROXY

pytestmark = pytest.mark.integration


def audit(db: Db, rows: int) -> None:
    """A history table without any key; duplicates are legitimate rows."""
    db.run("CREATE TABLE audit (at date, who varchar(20), what text)")
    values = ", ".join(
        f"('2024-01-{1 + n % 28:02d}', 'user{n % 7}', {'NULL' if n % 9 == 0 else repr(f'event {n % 50}')})"
        for n in range(rows)
    )
    db.run(f"INSERT INTO audit VALUES {values}")


@pytest.mark.parametrize(
    ("old_engine", "new_engine"), [("postgresql", "postgresql"), ("mysql", "postgresql")]
)
def test_keyless_table_is_compared_as_a_multiset(
    make_db: Callable[[str], Db], tmp_path: Path, old_engine: str, new_engine: str
) -> None:
    old, new = make_db(old_engine), make_db(new_engine)
    for db in (old, new):
        audit(db, 3000)
    same = compare_cli(old, new, cwd=tmp_path)
    assert same.code == 0
    assert same.table("audit")["keyless"] is True
    assert same.table("audit")["rows_compared"] == 3000

    # n=0 row ('2024-01-01', 'user0', NULL) exists several times: drop exactly one copy,
    # and add one more copy of an existing row plus a new row.
    new.run(
        "DELETE FROM audit WHERE at = '2024-01-01' AND who = 'user0' AND what IS NULL "
        + (
            "LIMIT 1"
            if new.engine == "mysql"
            else "AND ctid = (SELECT min(ctid) FROM audit WHERE at = '2024-01-01' AND who = 'user0' AND what IS NULL)"
        ),
        "INSERT INTO audit VALUES ('2024-01-02', 'user1', 'event 1'), ('2030-01-01', 'new', '')",
    )
    found = compare_cli(old, new, cwd=tmp_path)
    assert found.code == 1
    table = found.table("audit")
    assert table["keyless"] is True and table["key"] == []
    assert found.keys("audit", "missing") == {("2024-01-01", "user0", None)}
    assert found.keys("audit", "extra") == {
        ("2024-01-02", "user1", "event 1"),
        ("2030-01-01", "new", ""),
    }
    assert table["missing"] == 1 and table["extra"] == 2 and table["mismatched"] == 0
    log = [json.loads(line) for line in (tmp_path / "divergence.jsonl").read_text().splitlines()]
    mine = [e for e in log if e["source"] == "comparator" and e.get("keyless")]
    assert sorted(e["kind"] for e in mine[-3:]) == ["extra", "extra", "missing"]
    assert all("row_digest" in e and "key" not in e for e in mine)


def small_pair(make_db: Callable[[str], Db]) -> tuple[Db, Db]:
    old, new = make_db("postgresql"), make_db("postgresql")
    for db in (old, new):
        db.run(
            "CREATE TABLE items (id int PRIMARY KEY, name text)",
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g",
            "CREATE TABLE other (k text PRIMARY KEY)",
            "INSERT INTO other VALUES ('a'), ('b')",
        )
    return old, new


def test_json_report_divergence_log_and_metrics_file(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    old, new = small_pair(make_db)
    new.run("UPDATE items SET name = 'x' WHERE id = 7", "DELETE FROM items WHERE id = 500")
    metrics_file = tmp_path / "comparator.prom"
    found = compare_cli(
        old, new, "--metrics-file", str(metrics_file), "--samples", "1", cwd=tmp_path
    )
    assert found.code == 1
    items = found.table("items")
    assert (items["missing"], items["extra"], items["mismatched"]) == (1, 0, 1)
    assert items["samples"]["mismatched"] == [{"key": [7], "columns": ["name"]}]
    assert items["rows_compared"] == 500 and items["rows_per_second"] > 0
    assert found.report["divergent_rows"] == 2 and found.report["identical"] is False
    assert "password" not in json.dumps(found.report)

    events = [json.loads(x) for x in (tmp_path / "divergence.jsonl").read_text().splitlines()]
    assert {(e["kind"], tuple(e["key"])) for e in events} == {
        ("missing", (500,)),
        ("mismatched", (7,)),
    }
    assert all(e["source"] == "comparator" and e["table"] == "public.items" for e in events)
    assert next(e for e in events if e["kind"] == "mismatched")["columns"] == ["name"]

    text = metrics_file.read_text()
    assert 'shadowproxy_comparator_runs_total{result="different"} 1.0' in text
    assert 'shadowproxy_comparator_divergent_rows{kind="missing",table="items"} 1.0' in text
    assert 'shadowproxy_comparator_divergent_rows{kind="extra",table="other"} 0.0' in text
    assert 'shadowproxy_comparator_rows_compared_total{table="items"} 500.0' in text
    assert "shadowproxy_comparator_last_run_duration_seconds" in text
    assert "shadowproxy_comparator_last_run_timestamp_seconds" in text


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return subprocess.run(
        [SHADOWPROXY, "compare", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=120,
    )


def test_exit_codes_settings_fallback_and_table_filters(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    old, new = small_pair(make_db)
    log = ["--divergence-log", str(tmp_path / "d.jsonl"), "--settle-seconds", "0"]
    # Stores from the proxy's settings when no flag is given.
    env = {"SHADOW_OLD_DSN": old.url, "SHADOW_NEW_DSN": new.url}
    same = run([*log], tmp_path, env)
    assert same.returncode == 0, same.stderr
    assert "IDENTICAL" in same.stdout and "public.items" in same.stdout

    new.run("DELETE FROM other WHERE k = 'a'", "CREATE TABLE only_old_missing (id int)")
    only_items = run(["--old", old.url, "--new", new.url, "--tables", "items", *log], tmp_path)
    assert only_items.returncode == 0, only_items.stdout
    excluded = run(
        ["--old", old.url, "--new", new.url, "--exclude", "other,only_*", *log], tmp_path
    )
    assert excluded.returncode == 0
    everything = run(["--old", old.url, "--new", new.url, "--json", *log], tmp_path)
    assert everything.returncode == 1
    report = json.loads(everything.stdout)
    by_name = {t["table"]: t for t in report["tables"]}
    assert by_name["other"]["missing"] == 1
    assert by_name["only_old_missing"]["error"] == "table missing in old"

    bad = run(["--old", "postgresql://u:s3cret@127.0.0.1:1/x", "--new", new.url, *log], tmp_path)
    assert (
        bad.returncode == 2
        and "s3cret" not in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    unparsable = run(["--old", "mysql://u:s3cret@host:99999/db", "--new", new.url], tmp_path)
    assert unparsable.returncode == 2 and "s3cret" not in unparsable.stderr
    missing = run(["--new", new.url], tmp_path)
    assert missing.returncode == 2 and "SHADOW_OLD_DSN" in missing.stderr


def test_json_and_mixed_case_names_across_engines(
    make_db: Callable[[str], Db], tmp_path: Path
) -> None:
    """MariaDB ``Events.Payload`` (JSON text as written) vs PostgreSQL ``events.payload``
    (jsonb, keys reordered): compared parsed, keyed and keyless, names folded."""
    old, new = make_db("mysql"), make_db("postgresql")
    old.run(
        "CREATE TABLE `Events` (`Id` int PRIMARY KEY, `Payload` json, `Note` text)",
        "CREATE TABLE `Trail` (`At` date, `Doc` json)",
    )
    new.run(
        "CREATE TABLE events (id int PRIMARY KEY, payload jsonb, note text)",
        "CREATE TABLE trail (at date, doc jsonb)",
    )
    docs = ['{"b": 1, "a": [1, 2]}', '{"x":{"z":null,"y":"é"}}', "[]", None]
    for db in (old, new):
        events = "Events" if db.engine == "mysql" else "events"
        trail = "Trail" if db.engine == "mysql" else "trail"
        db.many(
            f"INSERT INTO {events} VALUES (%s, %s, %s)",
            [(i, d, f"n{i}") for i, d in enumerate(docs)],
        )
        db.many(f"INSERT INTO {trail} VALUES (%s, %s)", [("2024-01-01", d) for d in docs])
    same = compare_cli(old, new, cwd=tmp_path)
    assert same.code == 0, same.report
    assert {t["table"] for t in same.report["tables"]} == {"Events", "Trail"}

    new.run(
        """UPDATE events SET payload = '{"b": 2, "a": [1, 2]}' WHERE id = 0""",
        """UPDATE trail SET doc = '{"x": {"z": null, "y": "e"}}' WHERE doc ? 'x'""",
    )
    found = compare_cli(old, new, cwd=tmp_path)
    assert found.code == 1
    assert found.table("Events")["samples"]["mismatched"] == [{"key": [0], "columns": ["Payload"]}]
    trail = found.table("Trail")
    assert trail["keyless"] and (trail["missing"], trail["extra"]) == (1, 1)
    assert any("json compared parsed" in n for n in trail["inexact"])
