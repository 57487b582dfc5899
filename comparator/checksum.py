"""Checksum bisection, pushed down into both databases.

How this works, for a table with a key:

1. The authoritative store picks the top-level segment boundaries: every Nth key in
   its own key order (``--segment-rows``).  Segments are half-open key ranges, so both
   stores' rows are partitioned by the same boundaries whatever their gaps.
2. For each segment both stores compute ``count`` and the sum of 60-bit row hashes
   of normalized rows, concurrently.  Equal: the segment is identical.
3. A differing segment is split: the store with more rows there picks
   ``--bisection-factor`` sub-boundaries inside it and both stores return all
   per-bucket checksums in one grouped query each; differing buckets recurse.  Once
   most segments differ (scattered differences), segments skip step 2.
4. At or below ``--diff-threshold`` rows, both stores return ``(key, row hash)`` for
   all differing buckets at once; keys present on one side or with different hashes
   are fetched whole, by key, and compared in Python column by column
   (``comparator.diff``).

Keyless tables are compared as multisets: checksums grouped by the first hex digits
of the row hash, then the rows of the differing hash buckets only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from comparator.diff import (
    KeyedOutcome,
    classify_multiset,
    classify_rows,
    hash_candidates,
    norm_key,
)
from comparator.plan import TablePlan
from comparator.sources.base import Key, KeyRange, Source

FETCH_BATCH = 1000
RANGES_PER_QUERY = 64


@dataclass(frozen=True)
class Tuning:
    # A differing segment is split into `bisection_factor` buckets whose checksums come
    # back in one grouped query per store: a large factor costs nothing extra per level
    # and leaves small buckets (here ~50 rows) to download.
    segment_rows: int = 100_000
    bisection_factor: int = 2048
    diff_threshold: int = 64


@dataclass
class SegmentOutcome:
    rows: int
    keyed: KeyedOutcome = field(default_factory=KeyedOutcome)
    only_a: list[tuple[Any, ...]] = field(default_factory=list)  # keyless: whole rows
    only_b: list[tuple[Any, ...]] = field(default_factory=list)


Throttle = Callable[[int], Awaitable[None]]


async def _no_throttle(rows: int) -> None:
    return None


class TableComparer:
    """Compares one table between store A (authoritative) and store B."""

    def __init__(
        self,
        plan: TablePlan,
        a: Source,
        b: Source,
        tuning: Tuning,
        throttle: Throttle = _no_throttle,
    ) -> None:
        self.plan = plan
        self.a = a
        self.b = b
        self.tuning = tuning
        self.throttle = throttle
        self._checked = 0  # top-level segments checksummed, and how many differed
        self._differing = 0

    # ---------------------------------------------------------------- top level

    async def boundaries(self) -> list[Key]:
        """Top-level segment boundaries, chosen by one store (PostgreSQL walks faster)."""
        if self.plan.keyless:
            return []
        first, second = (self.b, self.a) if self._b_walks_faster() else (self.a, self.b)
        tq_first, tq_second = (
            (self.plan.b, self.plan.a) if first is self.b else (self.plan.a, self.plan.b)
        )
        bounds = await first.boundaries(tq_first, None, None, self.tuning.segment_rows)
        if not bounds:  # one store may be empty while the other is not
            bounds = await second.boundaries(tq_second, None, None, self.tuning.segment_rows)
        return bounds

    def _b_walks_faster(self) -> bool:
        return self.a.dsn.engine == "mysql" and self.b.dsn.engine == "postgresql"

    async def segment(self, lo: Key | None, hi: Key | None) -> SegmentOutcome:
        if self.plan.keyless:
            return await self._keyless()
        await self.throttle(self.tuning.segment_rows)
        # Rows compared: the authoritative store's rows.
        if self.plan.row_compare:
            count_a, out = await self._download([(lo, hi)])
            return SegmentOutcome(count_a, out)
        if self._mostly_differing():
            # Most segments differ (many scattered differences): the segment checksum
            # would only cost a scan; go straight to bucket checksums.
            count_a, out = await self._split(lo, hi, self.tuning.segment_rows, False)
            return SegmentOutcome(count_a, out)
        ca, cb = await asyncio.gather(
            self.a.checksum(self.plan.a, lo, hi), self.b.checksum(self.plan.b, lo, hi)
        )
        self._checked += 1
        if ca == cb:
            return SegmentOutcome(ca[0])
        self._differing += 1
        _, out = await self._split(lo, hi, max(ca[0], cb[0]), cb[0] > ca[0])
        return SegmentOutcome(ca[0], out)

    def _mostly_differing(self) -> bool:
        return self._checked >= 2 and self._differing * 4 >= self._checked * 3

    # ---------------------------------------------------------------- bisection

    async def _split(
        self, lo: Key | None, hi: Key | None, rows: int, b_has_more: bool
    ) -> tuple[int, KeyedOutcome]:
        """Compare ``[lo, hi)`` bucket by bucket; returns A's row count and the differences.

        Buckets are every ``rows / factor``-th key of the store holding more rows there
        (or of the PostgreSQL store, whose index walk is cheaper);
        both stores return all bucket checksums in one grouped query each.  Differing
        buckets at or under the threshold are downloaded together, larger ones recurse.
        """
        factor = min(
            self.tuning.bisection_factor,
            self.a.bucket_limit(self.plan.a),
            self.b.bucket_limit(self.plan.b),
        )
        every = max(1, math.ceil(rows / factor))
        use_b = b_has_more or self._b_walks_faster()
        first, second = (self.b, self.a) if use_b else (self.a, self.b)
        tq_first, tq_second = (self.plan.b, self.plan.a) if use_b else (self.plan.a, self.plan.b)
        bounds = await first.boundaries(tq_first, lo, hi, every)
        if not bounds:
            bounds = await second.boundaries(tq_second, lo, hi, every)
        if not bounds:
            return await self._download([(lo, hi)])
        sums_a, sums_b = await asyncio.gather(
            self.a.bucket_checksums(self.plan.a, lo, hi, bounds),
            self.b.bucket_checksums(self.plan.b, lo, hi, bounds),
        )
        edges: list[Key | None] = [lo, *bounds, hi]
        small: list[KeyRange] = []
        large: list[tuple[Key | None, Key | None, int, bool]] = []
        for i in range(len(bounds) + 1):
            ca, cb = sums_a.get(i, (0, 0)), sums_b.get(i, (0, 0))
            if ca == cb:
                continue
            sub_rows = max(ca[0], cb[0])
            # No progress (every row in one bucket, e.g. a key range only B has): download.
            if sub_rows <= self.tuning.diff_threshold or sub_rows >= rows:
                small.append((edges[i], edges[i + 1]))
            else:
                large.append((edges[i], edges[i + 1], sub_rows, cb[0] > ca[0]))
        parts = await asyncio.gather(
            self._download(small),
            *(self._split(lo_, hi_, n, more_b) for lo_, hi_, n, more_b in large),
        )
        out = KeyedOutcome()
        for _, part in parts:
            out.merge(part)
        return sum(c for c, _ in sums_a.values()), out

    async def _download(self, ranges: list[KeyRange]) -> tuple[int, KeyedOutcome]:
        """Key and row hash of every row in the ranges, from both stores; A's row count."""
        if not ranges:
            return 0, KeyedOutcome()
        chunks = [ranges[i : i + RANGES_PER_QUERY] for i in range(0, len(ranges), RANGES_PER_QUERY)]
        fetched = await asyncio.gather(
            *(self.a.key_hashes(self.plan.a, c) for c in chunks),
            *(self.b.key_hashes(self.plan.b, c) for c in chunks),
        )
        hashes_a = [r for part in fetched[: len(chunks)] for r in part]
        hashes_b = [r for part in fetched[len(chunks) :] for r in part]
        candidates = hash_candidates(self.plan, hashes_a, hashes_b)
        return len(hashes_a), await self.classify_keys(candidates)

    async def classify_keys(self, keys: list[tuple[str, Key]]) -> KeyedOutcome:
        """Fetch the rows of these keys from both stores and compare them column by column."""
        # A key read from one store is looked up in both (keys cross engines as text).
        unique: dict[tuple[Any, ...], Key] = {}
        for side, key in keys:
            unique.setdefault(norm_key(self.plan, key, side), key)
        wanted = list(unique.values())
        batches = [wanted[i : i + FETCH_BATCH] for i in range(0, len(wanted), FETCH_BATCH)]
        fetched = await asyncio.gather(
            *(self.a.rows_by_keys(self.plan.a, b) for b in batches),
            *(self.b.rows_by_keys(self.plan.b, b) for b in batches),
        )
        out = KeyedOutcome()
        for i in range(len(batches)):
            out.merge(classify_rows(self.plan, fetched[i], fetched[len(batches) + i]))
        return out

    # ------------------------------------------------------------------ keyless

    def hash_width(self) -> int:
        return 4 if self.plan.estimated_rows > 4_000_000 else 3

    async def _keyless(self) -> SegmentOutcome:
        width = self.hash_width()
        sums_a, sums_b = await asyncio.gather(
            self.a.hash_buckets(self.plan.a, width), self.b.hash_buckets(self.plan.b, width)
        )
        rows = sum(c for c, _ in sums_a.values())
        await self.throttle(rows)
        buckets = set(sums_a) | set(sums_b)
        if self.plan.row_compare:  # JSON is not in the hash: every bucket is compared
            differing = sorted(buckets)
        else:
            differing = sorted(b for b in buckets if sums_a.get(b) != sums_b.get(b))
        only_a, only_b = await self.keyless_rows(differing)
        return SegmentOutcome(rows, only_a=only_a, only_b=only_b)

    async def keyless_rows(
        self, buckets: list[str]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows only in A and only in B among the given hash buckets."""
        if not buckets:
            return [], []
        width = self.hash_width()
        rows_a, rows_b = await asyncio.gather(
            self.a.rows_in_buckets(self.plan.a, width, buckets),
            self.b.rows_in_buckets(self.plan.b, width, buckets),
        )
        return classify_multiset(self.plan, rows_a, rows_b)
