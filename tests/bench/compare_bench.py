"""Benchmark: ``shadowproxy compare`` against reladiff on the same tables, in one run.

Driven by ``tests/bench/compare.sh``.  For each size (1 000 000 rows; 10 000 000 too
with BENCH_10M=1) it loads one table on PostgreSQL and MariaDB, an identical copy and
a copy with 0.1% of rows differing (missing, extra and changed, spread over the key
range), then times both tools on PG↔PG and MariaDB↔PG, identical and differing.
Prints wall time, rows/s and the ratio, and checks that both tools report exactly the
planted differences.  The databases are dropped afterwards (BENCH_KEEP=1 keeps them).

BENCH_ROWS sets the first size; BENCH_CASES (e.g. ``PG-PG/identical,MariaDB-PG/0.1% diff``)
runs only those cases and loads only the tables they need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql

ROOT = Path(__file__).resolve().parents[2]
SHADOWPROXY = str(ROOT / ".venv" / "bin" / "shadowproxy")
RELADIFF = os.environ.get("RELADIFF", str(ROOT / ".venv" / "reladiff" / "bin" / "reladiff"))
PG = "postgresql://postgres@127.0.0.1:5432"
MY = "mysql://root@127.0.0.1:3306"
PERIOD = 3000  # one missing, one extra and one changed row per 3000 keys: 0.1%

PG_TABLE = (
    "CREATE TABLE bench (id bigint PRIMARY KEY, name varchar(64), amount numeric(12,2), "
    "created timestamp(6), score double precision, flag boolean)"
)
MY_TABLE = (
    "CREATE TABLE bench (id bigint PRIMARY KEY, name varchar(64), amount decimal(12,2), "
    "created datetime(6), score double, flag tinyint(1))"
)


def pg_rows(lo: int, hi: int, where: str) -> str:
    return (
        "SELECT g, md5(g::text), (g % 100000) / 100.0, timestamp '2024-01-01' "
        "+ g * interval '1 second' + (g % 1000) * interval '1 microsecond', g / 8.0, g % 3 = 0 "
        f"FROM generate_series({lo}, {hi}) g WHERE {where}"
    )


def my_rows(lo: int, hi: int, where: str) -> str:
    return (
        "SELECT seq, md5(seq), (seq % 100000) / 100, TIMESTAMP'2024-01-01 00:00:00' "
        "+ INTERVAL seq SECOND + INTERVAL (seq % 1000) MICROSECOND, seq / 8, seq % 3 = 0 "
        f"FROM seq_{lo}_to_{hi} WHERE {where.replace('g', 'seq')}"
    )


# The old table has holes where the new one has extra rows.
OLD_ROWS = f"g % {PERIOD} <> 2999"


def pg_exec(db: str, *sql: str) -> None:
    with psycopg.connect(f"{PG}/{db}", autocommit=True) as c:
        for s in sql:
            c.execute(s)  # type: ignore[arg-type]


def my_exec(db: str | None, *sql: str) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=db, autocommit=True)
    try:
        with conn.cursor() as cur:
            for s in sql:
                cur.execute(s)
    finally:
        conn.close()


def setup(rows: int, wanted: set[str]) -> dict[str, str]:
    """Create the tables named in ``wanted`` (pg_old, pg_same, pg_diff, my_old); returns
    name -> DSN."""
    tag = f"cmpbench_{rows}"
    names = {k: f"{tag}_{k}" for k in ("pg_old", "pg_same", "pg_diff") if k in wanted}
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        for db in names.values():
            c.execute(f"DROP DATABASE IF EXISTS {db}")  # type: ignore[arg-type]
            c.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
    for db in names.values():
        pg_exec(db, PG_TABLE, f"INSERT INTO bench {pg_rows(1, rows, OLD_ROWS)}")
    plant_pg = [
        f"DELETE FROM bench WHERE id % {PERIOD} = 17",
        f"UPDATE bench SET name = 'changed' WHERE id % {PERIOD} = 1500",
        f"INSERT INTO bench {pg_rows(1, rows, f'g % {PERIOD} = 2999')}",
    ]
    if "pg_diff" in names:
        pg_exec(names["pg_diff"], *plant_pg)
    for db in names.values():
        pg_exec(db, "VACUUM ANALYZE bench")
    dsns = {k: f"{PG}/{db}" for k, db in names.items()}
    if "my_old" not in wanted:
        return dsns
    my_db = f"{tag}_my_old"
    my_exec(None, f"DROP DATABASE IF EXISTS {my_db}", f"CREATE DATABASE {my_db}")
    my_exec(
        my_db, MY_TABLE, f"INSERT INTO bench {my_rows(1, rows, OLD_ROWS)}", "ANALYZE TABLE bench"
    )
    dsns["my_old"] = f"{MY}/{my_db}"
    return dsns


def warm_up(dsns: dict[str, str]) -> None:
    """Read every table once after loading, so the first timed tool is not the one
    that pulls the freshly written pages into the caches."""
    scan = "SELECT count(*), sum(length(name)), max(created), sum(score) FROM bench"
    for key, dsn in dsns.items():
        if key.startswith("pg_"):
            pg_exec(dsn.rsplit("/", 1)[1], scan)
        else:
            my_exec(dsn.rsplit("/", 1)[1], scan)


def drop(rows: int) -> None:
    tag = f"cmpbench_{rows}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        for k in ("pg_old", "pg_same", "pg_diff"):
            c.execute(f"DROP DATABASE IF EXISTS {tag}_{k} WITH (FORCE)")  # type: ignore[arg-type]
    my_exec(None, f"DROP DATABASE IF EXISTS {tag}_my_old")


def truth(rows: int) -> dict[str, set[int]]:
    ids = range(1, rows + 1)
    return {
        "missing": {i for i in ids if i % PERIOD == 17},
        "extra": {i for i in ids if i % PERIOD == 2999},
        "mismatched": {i for i in ids if i % PERIOD == 1500},
    }


@dataclass
class Timing:
    seconds: float
    found: dict[str, set[int]]


def run_ours(old: str, new: str, tmp: Path) -> Timing:
    cmd = [SHADOWPROXY, "compare", "--old", old, "--new", new, "--json", "--samples", "100000"]
    cmd += ["--settle-seconds", "0", "--divergence-log", str(tmp / "divergence.jsonl")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"shadowproxy compare failed: {proc.stderr[-2000:]}")
    table = json.loads(proc.stdout)["tables"][0]
    found = {k: {s["key"][0] for s in table["samples"][k]} for k in truth(0)}
    return Timing(seconds, found)


def run_reladiff(old: str, new: str) -> Timing:
    cmd = [RELADIFF, "-a", "hashdiff", "-k", "id", "-c", "%", old, "bench", new, "bench", "--json"]
    env = dict(os.environ, COLUMNS="100000")  # one JSON document per line
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"reladiff failed: {proc.stderr[-2000:]}")
    minus: set[int] = set()
    plus: set[int] = set()
    for line in proc.stdout.splitlines():
        if line.strip():
            sign, row = json.loads(line)
            (minus if sign == "-" else plus).add(int(row[0]))
    found = {"missing": minus - plus, "extra": plus - minus, "mismatched": minus & plus}
    return Timing(seconds, found)


def main() -> None:
    first = int(os.environ.get("BENCH_ROWS", "1000000"))  # smaller for a quick check
    sizes = [first] + ([10_000_000] if os.environ.get("BENCH_10M") == "1" else [])
    tmp = Path(os.environ.get("BENCH_TMP", "/tmp"))
    header = (
        f"{'rows':>10} {'pair':<12} {'case':<10} {'ours s':>8} {'ours rows/s':>12} "
        f"{'reladiff s':>10} {'rel rows/s':>11} {'ratio':>6}  same findings"
    )
    lines = [header]
    ok = True
    # (pair, case, old table, new table)
    all_cases = [
        ("PG-PG", "identical", "pg_old", "pg_same"),
        ("PG-PG", "0.1% diff", "pg_old", "pg_diff"),
        ("MariaDB-PG", "identical", "my_old", "pg_same"),
        ("MariaDB-PG", "0.1% diff", "my_old", "pg_diff"),
    ]
    only = {c.strip() for c in os.environ.get("BENCH_CASES", "").split(",") if c.strip()}
    chosen = [c for c in all_cases if not only or f"{c[0]}/{c[1]}" in only]
    if not chosen:
        sys.exit(f"BENCH_CASES matches none of {[f'{c[0]}/{c[1]}' for c in all_cases]}")
    for rows in sizes:
        print(f"loading {rows:,} rows ...", file=sys.stderr, flush=True)
        dsns = setup(rows, {t for c in chosen for t in c[2:]})
        want = truth(rows)
        nothing: dict[str, set[int]] = {k: set() for k in want}
        warm_up(dsns)
        for pair, case, old_t, new_t in chosen:
            old, new = dsns[old_t], dsns[new_t]
            expected = nothing if case == "identical" else want
            print(f"{pair} {case} ...", file=sys.stderr, flush=True)
            # Alternate which tool runs first so neither always meets colder caches.
            if case == "identical":
                ours, theirs = run_ours(old, new, tmp), run_reladiff(old, new)
            else:
                theirs, ours = run_reladiff(old, new), run_ours(old, new, tmp)
            same = ours.found == theirs.found == expected
            ok &= same
            n = rows - rows // PERIOD  # rows of the old table
            lines.append(
                f"{rows:>10,} {pair:<12} {case:<10} {ours.seconds:>8.2f} {n / ours.seconds:>12,.0f} "
                f"{theirs.seconds:>10.2f} {n / theirs.seconds:>11,.0f} "
                f"{theirs.seconds / ours.seconds:>5.1f}x  {'yes' if same else 'NO'}"
            )
            if not same:
                for kind in want:
                    lines.append(
                        f"    {kind}: ours {len(ours.found[kind])}, reladiff {len(theirs.found[kind])}, "
                        f"planted {len(expected[kind])}"
                    )
        if os.environ.get("BENCH_KEEP") != "1":
            drop(rows)
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
