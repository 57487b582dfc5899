"""One comparison run: discover tables, compare their segments in parallel, settle, report.

Side A is the authoritative store (``--authoritative``, old by default).  Segments of
all tables share one pool of ``workers`` concurrent tasks; every finished segment is
recorded in the segment store (checkpoint), so a resumed run only compares what is
left and ends with the same result.  Differences found while the application writes
are re-checked after the settle delay (``comparator.settle``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from comparator.checkpoint import SegmentStore
from comparator.checksum import SegmentOutcome, TableComparer, Tuning
from comparator.codec import decode_key, encode_key
from comparator.diff import KeyedOutcome, RowDiff, norm_key
from comparator.dsn import StoreDsn
from comparator.plan import TablePlan, make_plan
from comparator.report import RunReport, TableResult
from comparator.settle import Pending, settle
from comparator.sources.base import Key, Source

log = logging.getLogger(__name__)


@dataclass
class CompareOptions:
    old: StoreDsn
    new: StoreDsn
    schema_name: str | None = None
    tables: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    tuning: Tuning = field(default_factory=Tuning)
    settle_seconds: float = 3.0
    authoritative: Literal["old", "new"] = "old"
    workers: int = 2
    max_rows_per_second: float | None = None
    proxy_admin: str | None = None
    worker_only: bool = False  # compare segments for a shared run, report nothing

    def schema_for(self, dsn: StoreDsn) -> str:
        if dsn.engine == "postgresql":
            return self.schema_name or "public"
        both_mysql = self.old.engine == self.new.engine == "mysql"
        return self.schema_name if (self.schema_name and both_mysql) else dsn.database

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed."""
        t = self.tuning
        return {
            "old": self.old.redacted(),
            "new": self.new.redacted(),
            "schema": self.schema_name,
            "authoritative": self.authoritative,
            "segment_rows": t.segment_rows,
            "bisection_factor": t.bisection_factor,
            "diff_threshold": t.diff_threshold,
        }


def make_source(dsn: StoreDsn, pool_size: int) -> Source:
    if dsn.engine == "postgresql":
        from comparator.sources.postgres import PostgresSource

        return PostgresSource(dsn, pool_size)
    from comparator.sources.mysql import MysqlSource

    return MysqlSource(dsn, pool_size)


class Throttle:
    """Keeps the rows compared per second under a bound (protects production)."""

    def __init__(self, rows_per_second: float | None) -> None:
        self.rate = rows_per_second
        self.next_at = time.monotonic()

    async def __call__(self, rows: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self.next_at)
        self.next_at = start + rows / self.rate
        if start > now:
            await asyncio.sleep(start - now)


ProgressFn = Callable[[int], None]


class Comparison:
    def __init__(
        self,
        opts: CompareOptions,
        store: SegmentStore,
        progress: ProgressFn = lambda rows: None,
    ) -> None:
        self.opts = opts
        self.store = store
        self.progress = progress
        self.throttle = Throttle(opts.max_rows_per_second)
        a_dsn, b_dsn = (opts.old, opts.new) if opts.authoritative == "old" else (opts.new, opts.old)
        pool = opts.workers + 2
        self.a, self.b = make_source(a_dsn, pool), make_source(b_dsn, pool)
        self.a_schema, self.b_schema = opts.schema_for(a_dsn), opts.schema_for(b_dsn)
        self.labels = (opts.authoritative, "new" if opts.authoritative == "old" else "old")
        self.slots = asyncio.Semaphore(max(1, opts.workers))

    async def run(self, estimate: Callable[[int], None] = lambda rows: None) -> RunReport:
        report = RunReport(
            self.opts.old.redacted(), self.opts.new.redacted(), self.opts.authoritative
        )
        await asyncio.gather(self.a.open(), self.b.open())
        try:
            plans, results = await self._plans()
            estimate(sum(p.estimated_rows for p in plans))
            pending = await asyncio.gather(*(self._table(p) for p in plans))
            if self.opts.worker_only:
                return report
            await settle(
                [p for p in pending if p is not None],
                self.opts.settle_seconds,
                self.opts.proxy_admin,
            )
            results.extend(p.result() for p in pending if p is not None)
        finally:
            await asyncio.gather(self.a.close(), self.b.close())
        report.tables = sorted(results, key=lambda r: r.name)
        report.finished_at = time.time()
        return report

    # ------------------------------------------------------------------ discovery

    async def _plans(self) -> tuple[list[TablePlan], list[TableResult]]:
        names_a, names_b = await asyncio.gather(
            self.a.list_tables(self.a_schema), self.b.list_tables(self.b_schema)
        )
        # Across engines names match case-insensitively (PostgreSQL folds unquoted
        # names to lower case, MySQL keeps what was written).
        fold = self.a.dsn.engine != self.b.dsn.engine
        pairs = _pair_names(names_a, names_b, fold)
        wanted = sorted(pairs)
        if self.opts.tables:
            wanted = [t for t in wanted if any(fnmatch.fnmatchcase(t, p) for p in self.opts.tables)]
            missing = [
                p for p in self.opts.tables if not any(fnmatch.fnmatchcase(t, p) for t in wanted)
            ]
            if missing:
                raise LookupError(f"no such table on either store: {', '.join(missing)}")
        wanted = [
            t for t in wanted if not any(fnmatch.fnmatchcase(t, p) for p in self.opts.exclude)
        ]
        plans: list[TablePlan] = []
        errors: list[TableResult] = []
        for name in wanted:
            name_a, name_b = pairs[name]
            if name_a is None or name_b is None:
                where = self.labels[1] if name_b is None else self.labels[0]
                errors.append(TableResult(name, self.a_schema, error=f"table missing in {where}"))
                continue
            shape_a, shape_b = await asyncio.gather(
                self.a.describe(self.a_schema, name_a), self.b.describe(self.b_schema, name_b)
            )
            if shape_a is None or shape_b is None:  # dropped meanwhile
                errors.append(TableResult(name, self.a_schema, error="table disappeared"))
                continue
            plans.append(make_plan(shape_a, shape_b, *self.labels))
        return plans, errors

    # --------------------------------------------------------------------- tables

    async def _table(self, plan: TablePlan) -> Pending | None:
        started = time.monotonic()
        comparer = TableComparer(plan, self.a, self.b, self.opts.tuning, self.throttle)
        bounds = await self.store.plan(plan.name, comparer.boundaries)
        edges: list[Key | None] = [None, *bounds, None]

        async def worker() -> None:
            while True:
                async with self.store.claim(plan.name) as claim:
                    if claim is None:
                        return
                    async with self.slots:
                        lo, hi = edges[claim.seg], edges[claim.seg + 1]
                        outcome = await comparer.segment(lo, hi)
                    await claim.finish(outcome_to_json(outcome))
                    self.progress(outcome.rows)

        # Segments claimed by other workers finish there; a worker that dies releases
        # its segment (its transaction aborts) and one of the survivors takes it over.
        while True:
            await asyncio.gather(*(worker() for _ in range(max(1, self.opts.workers))))
            if not await self.store.remaining(plan.name):
                break
            await asyncio.sleep(0.2)
        if self.opts.worker_only:
            return None
        outcomes = await self.store.outcomes(plan.name)
        pending = Pending(plan, comparer, elapsed=time.monotonic() - started)
        for data in outcomes.values():
            seg = outcome_from_json(plan, data)
            pending.rows += seg.rows
            pending.keyed.merge(seg.keyed)
            pending.only_a.extend(seg.only_a)
            pending.only_b.extend(seg.only_b)
        return pending


def _pair_names(
    names_a: list[str], names_b: list[str], fold: bool
) -> dict[str, tuple[str | None, str | None]]:
    """Table name -> (name on A, name on B); None where a store lacks the table."""
    key = str.lower if fold else str
    by_b = {key(n): n for n in names_b}
    pairs: dict[str, tuple[str | None, str | None]] = {}
    for n in names_a:
        pairs[n] = (n, by_b.pop(key(n), None))
    for n in by_b.values():
        pairs[n] = (None, n)
    return pairs


def outcome_to_json(o: SegmentOutcome) -> dict[str, Any]:
    return {
        "rows": o.rows,
        "missing": [encode_key(k) for k in o.keyed.missing.values()],
        "extra": [encode_key(k) for k in o.keyed.extra.values()],
        "mismatched": [[encode_key(k), cols] for k, cols in o.keyed.mismatched.values()],
        "only_a": [encode_key(r) for r in o.only_a],
        "only_b": [encode_key(r) for r in o.only_b],
    }


def outcome_from_json(plan: TablePlan, data: dict[str, Any]) -> SegmentOutcome:
    keyed = KeyedOutcome()
    for k in data["missing"]:
        key = decode_key(k)
        keyed.missing[norm_key(plan, key, "a")] = key
    for k in data["extra"]:
        key = decode_key(k)
        keyed.extra[norm_key(plan, key, "b")] = key
    for k, cols in data["mismatched"]:
        key = decode_key(k)
        keyed.mismatched[norm_key(plan, key, "a")] = (key, cols)
    return SegmentOutcome(
        rows=int(data["rows"]),
        keyed=keyed,
        only_a=[decode_key(r) for r in data["only_a"]],
        only_b=[decode_key(r) for r in data["only_b"]],
    )


def row_diff(plan: TablePlan, keyed: KeyedOutcome, only_a: list[Any], only_b: list[Any]) -> RowDiff:
    if plan.keyless:
        return RowDiff(plan.schema, plan.name, [], list(only_a), list(only_b), [])
    columns = {k: cols for k, cols in keyed.mismatched.values()}
    return RowDiff(
        schema=plan.schema,
        table=plan.name,
        key_columns=list(plan.key),
        missing=_sorted(keyed.missing.values()),
        extra=_sorted(keyed.extra.values()),
        mismatched=_sorted(columns),
        mismatched_columns=columns,
    )


def _sorted(keys: Iterable[Key]) -> list[Key]:
    items = list(keys)
    try:
        return sorted(items)
    except TypeError:  # mixed or unorderable values (NULLs in a unique key, documents)
        return sorted(items, key=repr)
