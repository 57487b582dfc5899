"""Row-level differences between the two stores, and how they are found.

A ``RowDiff`` is the outcome for one table: keys present only on the authoritative side
(``missing``), only on the other side (``extra``), and on both with different rows
(``mismatched``). For a keyless table the tuples are whole rows (all columns, in column
order) and the table is compared as a multiset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from comparator.normalize import ColumnPlan
    from comparator.plan import TablePlan


@dataclass
class RowDiff:
    """Differences found in one table (tuples are keys, or whole rows when keyless)."""

    schema: str
    table: str
    key_columns: list[str]
    missing: list[tuple]
    extra: list[tuple]
    mismatched: list[tuple]
    # For each mismatched key: the names of the columns whose values differ.
    mismatched_columns: dict[tuple, list[str]] = field(default_factory=dict)

    @property
    def keyless(self) -> bool:
        return not self.key_columns

    @property
    def divergent_rows(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.mismatched)


def norm_key(plan: TablePlan, key: tuple, side: str) -> tuple:
    """A key as a comparable value, whichever store (``a`` or ``b``) it was read from."""
    cols = [plan.columns[i] for i in plan.key_positions]
    fns = [c.old_py if side == "a" else c.new_py for c in cols]
    return tuple(f(v) for f, v in zip(fns, key, strict=True))


def differing_columns(plan: TablePlan, row_a: tuple, row_b: tuple) -> list[str]:
    return [
        c.name for c, va, vb in zip(plan.columns, row_a, row_b, strict=True) if not c.equal(va, vb)
    ]


@dataclass
class KeyedOutcome:
    """The classified differences of some keys of one table (raw keys)."""

    missing: dict[tuple, tuple] = field(default_factory=dict)  # norm key -> A's raw key
    extra: dict[tuple, tuple] = field(default_factory=dict)  # norm key -> B's raw key
    mismatched: dict[tuple, tuple[tuple, list[str]]] = field(default_factory=dict)

    def merge(self, other: KeyedOutcome) -> None:
        self.missing.update(other.missing)
        self.extra.update(other.extra)
        self.mismatched.update(other.mismatched)

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.mismatched)

    def all_keys(self) -> list[tuple[str, tuple]]:
        """(side the raw key was read from, raw key) of every difference."""
        out = [("a", k) for k in self.missing.values()]
        out += [("b", k) for k in self.extra.values()]
        out += [("a", k) for k, _ in self.mismatched.values()]
        return out


def classify_rows(plan: TablePlan, rows_a: list[tuple], rows_b: list[tuple]) -> KeyedOutcome:
    """Compare full rows fetched by key from both sides."""
    pos = plan.key_positions
    by_a = {norm_key(plan, tuple(r[i] for i in pos), "a"): r for r in rows_a}
    by_b = {norm_key(plan, tuple(r[i] for i in pos), "b"): r for r in rows_b}
    out = KeyedOutcome()
    for nk, ra in by_a.items():
        raw = tuple(ra[i] for i in pos)
        rb = by_b.get(nk)
        if rb is None:
            out.missing[nk] = raw
            continue
        cols = differing_columns(plan, ra, rb)
        if cols:
            out.mismatched[nk] = (raw, cols)
    for nk, rb in by_b.items():
        if nk not in by_a:
            out.extra[nk] = tuple(rb[i] for i in pos)
    return out


def hash_candidates(
    plan: TablePlan, hashes_a: list[tuple], hashes_b: list[tuple]
) -> list[tuple[str, tuple]]:
    """Keys whose rows may differ, from ``(*key, hash, *extra)`` rows of both sides."""
    n = len(plan.key)
    extra_cols = [c for c in plan.columns if c.row_compare]
    by_b = {norm_key(plan, tuple(r[:n]), "b"): r for r in hashes_b}
    out: list[tuple[str, tuple]] = []
    seen: set[tuple] = set()
    for ra in hashes_a:
        nk = norm_key(plan, tuple(ra[:n]), "a")
        seen.add(nk)
        rb = by_b.get(nk)
        if rb is None or ra[n] != rb[n] or _extras_differ(extra_cols, ra[n + 1 :], rb[n + 1 :]):
            out.append(("a", tuple(ra[:n])))
    out.extend(("b", tuple(rb[:n])) for nk, rb in by_b.items() if nk not in seen)
    return out


def _extras_differ(cols: list[ColumnPlan], xs: tuple, ys: tuple) -> bool:
    return any(not c.equal(x, y) for c, x, y in zip(cols, xs, ys, strict=True))


def classify_multiset(
    plan: TablePlan, rows_a: list[tuple], rows_b: list[tuple]
) -> tuple[list[tuple], list[tuple]]:
    """Keyless tables: rows only in A and rows only in B, as multisets.

    Each row carries its hash as the last element.  Rows whose hashes differ but whose
    values are equal under the column plans (a float rounding edge) cancel out.
    """
    if plan.row_compare:
        # JSON is outside the row hash (no canonical SQL text): use the parsed values.
        rows_a = [(*r[:-1], _canonical(plan, r[:-1], "a")) for r in rows_a]
        rows_b = [(*r[:-1], _canonical(plan, r[:-1], "b")) for r in rows_b]
    count_a = Counter(r[-1] for r in rows_a)
    count_b = Counter(r[-1] for r in rows_b)
    surplus_a, surplus_b = count_a - count_b, count_b - count_a
    only_a = _take(rows_a, surplus_a)
    only_b = _take(rows_b, surplus_b)
    left: list[tuple] = []
    for ra in only_a:
        match = next(
            (i for i, rb in enumerate(only_b) if not differing_columns(plan, ra, rb)), None
        )
        if match is None:
            left.append(ra)
        else:
            only_b.pop(match)
    return left, only_b


def _canonical(plan: TablePlan, row: tuple, side: str) -> str:
    values = [
        (c.old_py if side == "a" else c.new_py)(v) for c, v in zip(plan.columns, row, strict=True)
    ]
    return orjson.dumps(values, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _take(rows: list[tuple], wanted: Counter[str]) -> list[tuple]:
    out = []
    need = Counter(wanted)
    for r in rows:
        if need[r[-1]] > 0:
            need[r[-1]] -= 1
            out.append(tuple(r[:-1]))
    return out
