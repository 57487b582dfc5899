"""``shadowproxy report``: is the migration ready for its next step?

Gathers the mode, every instance's heartbeat, the latest comparator runs and
the local divergence log, evaluates the gates of the next forward step, and
rates what it finds (critical / high / medium / low).  Markdown by default,
JSON with ``--json``.  Without a control store the facts come from the single
instance's admin API.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from proxy.control import changes
from proxy.control.commands import EXIT_NOT_APPLIED, admin_client
from proxy.control.controller import STORE_ERRORS, shadow_counts
from proxy.control.gates import (
    Facts,
    Gate,
    InstanceFacts,
    evaluate_gates,
    next_forward,
    rollback_target,
    shadow_mismatch_rate,
)
from proxy.control.statefile import ModeState
from proxy.control.store import ControlStore
from proxy.routing import Mode
from proxy.settings import Settings

SEVERITIES = ("critical", "high", "medium", "low")
SLOWER_BOUND = 2.0  # p99 ratio shadow/read store above which a fingerprint is a finding


@dataclass
class Report:
    state: ModeState
    facts: Facts
    now: float
    bounds: changes.Bounds
    divergence_log: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> kind -> n
    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def next_step(self) -> Mode | None:
        return next_forward(self.state.mode)

    @property
    def gates(self) -> tuple[Gate, ...]:
        step = self.next_step
        return evaluate_gates(step, self.facts, self.bounds, self.now) if step else ()

    def rollback_command(self) -> str | None:
        target = rollback_target(self.state.mode)
        if target is None:
            return None
        return f'shadowproxy mode set {target.value} --reason "roll back {self.state.mode.value}"'

    def divergences_by_kind(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for i in self.facts.instances:
            total.update(i.divergences)
        return dict(total)


def _divergences_by_table(path: Path) -> dict[str, dict[str, int]]:
    """Counts per (table, kind) from the local divergence log, when there is one here."""
    out: dict[str, Counter[str]] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        table = str(event.get("table") or "(unknown)")
        out.setdefault(table, Counter())[str(event.get("kind", "?"))] += 1
    return {table: dict(kinds) for table, kinds in sorted(out.items())}


def rate(report: Report) -> list[tuple[str, str]]:
    """The findings, most severe first."""
    found: list[tuple[str, str]] = []
    mode, live = report.state.mode, report.facts.live
    if mode is Mode.NEW_ONLY:
        found.append(
            ("critical", "new-only: the old store no longer receives writes; going back loses them")
        )
    behind = [i.instance for i in live if i.epoch != report.state.epoch]
    if behind:
        found.append(
            ("critical", f"instances not running epoch {report.state.epoch}: {', '.join(behind)}")
        )
    for gate in report.gates:
        if not gate.passed:
            found.append(
                (
                    "high",
                    f"gate {gate.name} for {report.next_step.value if report.next_step else '-'}: {gate.detail}",
                )
            )
    rejected = [i for i in report.facts.instances if i.rejected_units]
    if rejected:
        names = ", ".join(f"{i.instance} ({i.rejected_units})" for i in rejected)
        found.append(("high", f"units the new store refused, kept for repair: {names}"))
    if not live:
        found.append(
            ("medium", "no live instance heartbeats: nothing confirms what the fleet runs")
        )
    dead = [
        i
        for i in report.facts.instances
        if not i.live and (i.journal_backlog or i.mirror_queue_depth)
    ]
    if dead:
        names = ", ".join(i.instance for i in dead)
        found.append(("medium", f"stopped instances left a journal to replay: {names}"))
    run = report.facts.latest_run
    if any(g.name == "comparator" for g in report.gates):
        pass  # already judged as a gate of the next step
    elif run is None or run.finished_at is None:
        found.append(("medium", "no comparator run recorded in shadowproxy.compare_runs"))
    elif report.now - run.finished_at > report.bounds.compare_max_age:
        found.append(("medium", f"latest comparator run #{run.id} is older than the bound"))
    for row in worst_parity(live, limit=3):
        if _ratio(row) >= SLOWER_BOUND and int(row.get("samples", 0)) >= 20:
            found.append(
                (
                    "medium",
                    f"the shadow store is {_ratio(row):.1f}x slower (p99) on "
                    f"{row['fingerprint'][:80]} ({row['instance']})",
                )
            )
    _, _, reads = shadow_mismatch_rate(live)
    if mode.shadow_reads and reads == 0:
        found.append(("low", f"{mode.value} but no shadow read compared yet"))
    if mode is Mode.OLD_ONLY:
        found.append(("low", "old-only: nothing is mirrored; the new store falls behind"))
    return sorted(found, key=lambda f: SEVERITIES.index(f[0]))


def _ratio(row: dict[str, Any]) -> float:
    return float(row.get("shadow_store_p99_ms") or 0) / max(
        float(row.get("read_store_p99_ms") or 0), 1e-6
    )


def worst_parity(instances: Iterable[InstanceFacts], limit: int = 10) -> list[dict[str, Any]]:
    """The fingerprints the shadow store is slowest at (p99 ratio), across instances."""
    rows = [{**row, "instance": i.instance} for i in instances for row in i.parity]
    rows.sort(key=_ratio, reverse=True)
    return [{**r, "p99_ratio": round(_ratio(r), 2)} for r in rows[:limit]]


def to_json(report: Report) -> dict[str, Any]:
    rate_, mismatches, reads = shadow_mismatch_rate(report.facts.live)
    lags = [i.mirror_lag_seconds for i in report.facts.live if i.mirror_lag_seconds is not None]
    return {
        "generated_at": report.now,
        **report.state.to_json(),
        "next_step": report.next_step.value if report.next_step else None,
        "gates": [g.to_json() for g in report.gates],
        "ready": all(g.passed for g in report.gates) and report.next_step is not None,
        "instances": [
            {
                "instance": i.instance,
                "live": i.live,
                "mode": i.mode.value,
                "epoch": i.epoch,
                "heartbeat_age": round(i.heartbeat_age, 3),
                "mirror_queue_depth": i.mirror_queue_depth,
                "journal_backlog": i.journal_backlog,
                "mirror_lag_seconds_mean": i.mirror_lag_seconds,
            }
            for i in report.facts.instances
        ],
        "divergences_by_kind": report.divergences_by_kind(),
        "divergences_by_table": report.divergence_log,
        "mirror": {
            "queue_depth": sum(i.mirror_queue_depth for i in report.facts.live),
            "journal_backlog": sum(i.journal_backlog for i in report.facts.live),
            "lag_seconds_mean_max": max(lags) if lags else None,
        },
        "shadow_reads": {"reads": reads, "mismatches": mismatches, "rate": rate_},
        "performance_parity": worst_parity(report.facts.live),
        "findings": [{"severity": s, "finding": f} for s, f in report.findings],
        "rollback_command": report.rollback_command(),
    }


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    data = to_json(report)
    out = [
        f"# shadowproxy readiness report ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.now))})",
        "",
    ]
    out.append(
        f"- **Mode**: `{data['mode']}` (epoch {data['epoch']}, previous `{data['previous'] or '-'}`)"
    )
    out.append(
        f"- **Next step**: `{data['next_step'] or 'none (end of the ladder)'}` — {'ready' if data['ready'] else 'NOT ready'}"
    )
    rollback = data["rollback_command"]
    out.append(
        f"- **Rollback**: `{rollback}`"
        if rollback
        else "- **Rollback**: none (old-only is the bottom of the ladder)"
    )
    out += ["", "## Gates", "", "| gate | result | detail |", "|---|---|---|"]
    out += [
        f"| {g['name']} | {'pass' if g['passed'] else '**FAIL**'} | {g['detail']} |"
        for g in data["gates"]
    ]
    out += ["", "## Findings", ""]
    out += [f"- **{f['severity']}**: {f['finding']}" for f in data["findings"]] or ["- none"]
    out += [
        "",
        "## Instances",
        "",
        "| instance | live | mode | epoch | heartbeat age (s) | mirror queue | journal | mean mirror lag (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for i in data["instances"]:
        lag = (
            f"{i['mirror_lag_seconds_mean']:.4f}"
            if i["mirror_lag_seconds_mean"] is not None
            else "-"
        )
        out.append(
            f"| {i['instance']} | {'yes' if i['live'] else 'no'} | {i['mode']} | {i['epoch']} | {i['heartbeat_age']} | {i['mirror_queue_depth']} | {i['journal_backlog']} | {lag} |"
        )
    out += ["", "## Divergences", ""]
    kinds = data["divergences_by_kind"]
    out.append(
        "By kind (instances since start): "
        + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")
    )
    if data["divergences_by_table"]:
        out += ["", "| table | kinds |", "|---|---|"]
        out += [
            f"| {t} | {', '.join(f'{k} {n}' for k, n in ks.items())} |"
            for t, ks in data["divergences_by_table"].items()
        ]
    shadow = data["shadow_reads"]
    out += [
        "",
        "## Shadow reads",
        "",
        f"{shadow['mismatches']} of {shadow['reads']} compared reads differ ({shadow['rate']:.4%}).",
        "",
        "### Performance parity (worst fingerprints first)",
        "",
    ]
    parity = data["performance_parity"]
    if not parity:
        out.append("No shadow read timed yet.")
    else:
        out += [
            "| fingerprint | instance | samples | read store p50/p99 (ms) | shadow store p50/p99 (ms) | p99 ratio |",
            "|---|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| `{_cell(p['fingerprint'][:80])}` | {p['instance']} | {p['samples']} | "
            f"{p['read_store_p50_ms']}/{p['read_store_p99_ms']} | "
            f"{p['shadow_store_p50_ms']}/{p['shadow_store_p99_ms']} | {p['p99_ratio']} |"
            for p in parity
        ]
    out.append("")
    return "\n".join(out)


async def _gather_store(settings: Settings) -> tuple[ModeState, Facts, float]:
    assert settings.control_dsn is not None
    store = await ControlStore.connect(settings.control_dsn)
    try:
        state = await store.read_mode() or ModeState(settings.mode, 0)
        return state, await store.facts(), await store.now()
    finally:
        await store.close()


def _gather_admin(settings: Settings, args: argparse.Namespace) -> tuple[ModeState, Facts, float]:
    client = admin_client(args, settings)
    code, status = client.call("GET", "/status")
    if code != 200:
        raise OSError(f"admin API answered {code}")
    control = status.get("control") or {}
    state = ModeState.from_json({"mode": status["mode"], "epoch": status["epoch"], **control})
    recent = status.get("recent_divergences") or []
    reads, mismatches = shadow_counts(status)
    shadow = status.get("shadow_reads")
    parity = (shadow.get("parity") or []) if isinstance(shadow, dict) else []
    own = InstanceFacts(
        instance=str(control.get("instance") or status.get("instance")),
        mode=state.mode,
        epoch=state.epoch,
        live=True,
        mirror_queue_depth=int(status.get("mirror_queue_depth", 0)),
        journal_backlog=int(status.get("journal_backlog_units", 0)),
        rejected_units=int(status.get("rejected_units", 0)),
        divergences={str(k): int(v) for k, v in (status.get("divergences") or {}).items()},
        last_divergence_at=max((float(e["ts"]) for e in recent if "ts" in e), default=None),
        shadow_reads=reads,
        shadow_mismatches=mismatches,
        parity=tuple(parity),
    )
    return state, Facts((own,)), time.time()


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if settings.control_dsn is not None:
            state, facts, now = await _gather_store(settings)
        else:
            state, facts, now = _gather_admin(settings, args)
    except (*STORE_ERRORS, ValueError) as exc:
        print(f"shadowproxy: cannot build the report: {exc}", file=sys.stderr)
        return EXIT_NOT_APPLIED
    report = Report(state, facts, now, changes.bounds_from(settings))
    report.divergence_log = _divergences_by_table(settings.divergence_log)
    report.findings = rate(report)
    if args.json:
        sys.stdout.write(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(to_markdown(report))
    return 0
