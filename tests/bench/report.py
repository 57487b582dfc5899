#!/usr/bin/env python3
"""Helpers for tests/bench/pgbench.sh (standard library only).

Subcommands:

  parse LOG                 read one pgbench output file, print
                            "tps,latency_ms,failed,transactions" (empty fields for
                            values that are missing)
  drained                   read the proxy's /status JSON on stdin; exit 0 when both
                            "mirror_queue_depth" and "journal_backlog_units" are 0,
                            1 when either is not 0 yet, 2 when the JSON or a field
                            is missing (the fields are searched at any nesting depth)
  cpu OLD_DB NEW_DB          print "old_s,new_s,pgbench_s": the CPU time (user +
                            system, seconds) the running processes have used so
                            far, summed over the PostgreSQL backends of each
                            database and over pgbench; the difference of two
                            snapshots taken while pgbench runs is what a window
                            of the run cost each of them (backends exit with
                            their connections, so a snapshot after the run would
                            miss them)
  table CSV [--machine S] [--config S] [--date S]
                            print the Markdown summary of the raw results CSV
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
from collections.abc import Iterator
from typing import Any

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: ([0-9]+)", re.M)
TXNS_RE = re.compile(r"^number of transactions actually processed: ([0-9]+)", re.M)

# Display order; names not listed here follow in order of first appearance.
TARGET_ORDER = ["direct", "pgbouncer", "old-only", "dual-sync", "dual-async", "shadow-read"]
WORKLOAD_ORDER = ["select-simple", "select-extended", "select-prepared", "tpcb-extended"]


def cmd_parse(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    fields = []
    for rx in (TPS_RE, LAT_RE, FAILED_RE, TXNS_RE):
        m = rx.search(text)
        fields.append(m.group(1) if m else "")
    print(",".join(fields))
    return 0


# A backend's process title: "postgres: [cluster: ]user database host(port) state".
BACKEND_RE = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) ")


def cmd_cpu(old_db: str, new_db: str) -> int:
    ticks = os.sysconf("SC_CLK_TCK")
    total = {old_db: 0, new_db: 0, "pgbench": 0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                title = fb.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        used = int(fields[11]) + int(fields[12])  # utime, stime
        m = BACKEND_RE.match(title)
        if m is not None and m.group(1) in total:
            total[m.group(1)] += used
        elif os.path.basename(title.split(" ", 1)[0]) == "pgbench":
            total["pgbench"] += used
    print(",".join(f"{total[k] / ticks:.2f}" for k in (old_db, new_db, "pgbench")))
    return 0


def _find(obj: Any, key: str) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def cmd_drained() -> int:
    try:
        doc = json.load(sys.stdin)
    except ValueError:
        return 2
    result = 0
    for key in ("mirror_queue_depth", "journal_backlog_units"):
        values = list(_find(doc, key))
        if not values:
            return 2
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return 2
            if v != 0:
                result = 1
    return result


def _ordered(seen: list[str], preferred: list[str]) -> list[str]:
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _num(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def cmd_table(path: str, machine: str, config: str, date: str) -> int:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        print("no results in", path)
        return 1

    workloads_seen: list[str] = []
    targets_seen: list[str] = []
    tps: dict[tuple[str, str], list[float]] = {}
    lat: dict[tuple[str, str], list[float]] = {}
    runs: dict[tuple[str, str], int] = {}
    failed_txn: dict[tuple[str, str], int] = {}
    # CPU of the process between pgbench and the server, per transaction (us).
    cpu: dict[tuple[str, str], list[float]] = {}
    # CPU of the stores' backends and of pgbench, per transaction (us), over a
    # window inside the run (see the ``cpu`` subcommand).
    split: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        w, t = r["workload"], r["target"]
        if w not in workloads_seen:
            workloads_seen.append(w)
        if t not in targets_seen:
            targets_seen.append(t)
        key = (w, t)
        runs[key] = runs.get(key, 0) + 1
        failed_txn[key] = failed_txn.get(key, 0) + int(_num(r.get("failed", "")) or 0)
        v_tps, v_lat = _num(r["tps"]), _num(r["latency_ms"])
        if r["status"] == "ok" and v_tps is not None and v_lat is not None:
            tps.setdefault(key, []).append(v_tps)
            lat.setdefault(key, []).append(v_lat)
            v_cpu, v_txns = _num(r.get("cpu_s", "")), _num(r.get("txns", ""))
            if v_cpu is not None and v_txns:
                cpu.setdefault(key, []).append(v_cpu / v_txns * 1e6)
            window = _num(r.get("window_s", ""))
            if window:  # transactions in the window, at the run's mean rate
                for part in SPLIT:
                    v = _num(r.get(f"{part}_cpu_s", ""))
                    if v is not None:
                        split.setdefault((w, t, part), []).append(v / (v_tps * window) * 1e6)

    def med(d: dict[tuple[str, str], list[float]], key: tuple[str, str]) -> float | None:
        vals = d.get(key)
        return statistics.median(vals) if vals else None

    out = [
        "| workload | target | median TPS | median avg latency (ms) | TPS vs direct "
        "| TPS vs pgbouncer | middle CPU per txn (us) | ok runs | failed txns |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in _ordered(workloads_seen, WORKLOAD_ORDER):
        base_direct = med(tps, (w, "direct"))
        base_pgb = med(tps, (w, "pgbouncer"))
        for t in _ordered(targets_seen, TARGET_ORDER):
            key = (w, t)
            if key not in runs:
                continue
            m_tps, m_lat, m_cpu = med(tps, key), med(lat, key), med(cpu, key)
            out.append(
                "| {w} | {t} | {tps} | {lat} | {rd} | {rp} | {cpu} | {ok}/{n} | {f} |".format(
                    w=w,
                    t=t,
                    tps="—" if m_tps is None else f"{m_tps:.1f}",
                    lat="—" if m_lat is None else f"{m_lat:.3f}",
                    rd=_ratio(m_tps, base_direct),
                    rp=_ratio(m_tps, base_pgb),
                    cpu="—" if m_cpu is None else f"{m_cpu:.0f}",
                    ok=len(tps.get(key, [])),
                    n=runs[key],
                    f=failed_txn[key],
                )
            )
    print("\n".join(out))
    print()
    if split:
        print(_split_table(split, workloads_seen, targets_seen, cpu))
        print()
    if machine:
        print(f"Machine: {machine}")
    if config:
        print(f"Config: {config}")
    if date:
        print(f"Date: {date}")
    return 0


SPLIT = ("old", "new", "pgbench")


def _split_table(
    split: dict[tuple[str, str, str], list[float]],
    workloads: list[str],
    targets: list[str],
    middle: dict[tuple[str, str], list[float]],
) -> str:
    """Medians of the CPU per transaction of every process on the machine's
    cores: where a target's transaction spends the CPU the two cores share."""
    out = [
        "CPU per transaction by process (us; stores and pgbench over a window inside "
        "each run, the middle process over the whole run):",
        "",
        "| workload | target | old store | new store | pgbench | middle | all |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for w in _ordered(workloads, WORKLOAD_ORDER):
        for t in _ordered(targets, TARGET_ORDER):
            parts = [split.get((w, t, p)) for p in SPLIT] + [middle.get((w, t))]
            if not any(parts):
                continue
            meds = [statistics.median(v) if v else None for v in parts]
            cells = ["—" if v is None else f"{v:.0f}" for v in meds]
            known = [v for v in meds if v is not None]
            out.append(f"| {w} | {t} | " + " | ".join(cells) + f" | {sum(known):.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse")
    p.add_argument("log")
    sub.add_parser("drained")
    c = sub.add_parser("cpu")
    c.add_argument("old_db")
    c.add_argument("new_db")
    t = sub.add_parser("table")
    t.add_argument("csv")
    t.add_argument("--machine", default="")
    t.add_argument("--config", default="")
    t.add_argument("--date", default="")
    args = ap.parse_args(argv)
    if args.cmd == "parse":
        return cmd_parse(args.log)
    if args.cmd == "drained":
        return cmd_drained()
    if args.cmd == "cpu":
        return cmd_cpu(args.old_db, args.new_db)
    return cmd_table(args.csv, args.machine, args.config, args.date)


if __name__ == "__main__":
    sys.exit(main())
