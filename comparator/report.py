"""The outcome of a comparison: per table counts and samples, a summary table, JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from comparator.codec import plain
from comparator.diff import RowDiff

KINDS = ("missing", "extra", "mismatched")


@dataclass
class TableResult:
    name: str
    schema: str
    keyless: bool = False
    rows: int = 0
    elapsed: float = 0.0
    transient: int = 0
    diff: RowDiff | None = None
    inexact: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the table could not be compared (or exists on one side only)

    def count(self, kind: str) -> int:
        return len(getattr(self.diff, kind)) if self.diff is not None else 0

    @property
    def divergent(self) -> int:
        return sum(self.count(k) for k in KINDS)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def samples(self, limit: int) -> dict[str, list[dict[str, Any]]]:
        if self.diff is None:
            return {k: [] for k in KINDS}
        d = self.diff
        field_name = "row" if self.keyless else "key"
        out: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            items: list[dict[str, Any]] = []
            for key in getattr(d, kind)[:limit]:
                item: dict[str, Any] = {field_name: [plain(v) for v in key]}
                if kind == "mismatched":
                    item["columns"] = d.mismatched_columns.get(key, [])
                items.append(item)
            out[kind] = items
        return out

    def to_json(self, samples: int) -> dict[str, Any]:
        return {
            "table": self.name,
            "schema": self.schema,
            "keyless": self.keyless,
            "key": self.diff.key_columns if self.diff is not None else [],
            "rows_compared": self.rows,
            "missing": self.count("missing"),
            "extra": self.count("extra"),
            "mismatched": self.count("mismatched"),
            "transient": self.transient,
            "elapsed_seconds": round(self.elapsed, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "inexact": self.inexact,
            "notes": self.notes,
            "error": self.error,
            "samples": self.samples(samples),
        }


@dataclass
class RunReport:
    old: str  # redacted DSNs
    new: str
    authoritative: str
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    tables: list[TableResult] = field(default_factory=list)
    run_id: str | None = None

    @property
    def elapsed(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def divergent_rows(self) -> int:
        return sum(t.divergent for t in self.tables)

    @property
    def identical(self) -> bool:
        return self.divergent_rows == 0 and not any(t.error for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_json(self, samples: int = 10) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "old": self.old,
            "new": self.new,
            "authoritative": self.authoritative,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_seconds": round(self.elapsed, 3),
            "rows_compared": self.rows,
            "divergent_rows": self.divergent_rows,
            "rows_per_second": round(self.rows / self.elapsed, 1) if self.elapsed else 0.0,
            "tables": [t.to_json(samples) for t in self.tables],
        }

    def render(self, samples: int = 5) -> str:
        other = "new" if self.authoritative == "old" else "old"
        head = (
            "table",
            "rows",
            f"missing in {other}",
            f"extra in {other}",
            "mismatched",
            "transient",
            "elapsed",
            "rows/s",
            "",
        )
        lines = [head]
        for t in self.tables:
            flags = []
            if t.keyless:
                flags.append("keyless (multiset)")
            if t.error:
                flags.append(f"ERROR: {t.error}")
            lines.append(
                (
                    f"{t.schema}.{t.name}",
                    str(t.rows),
                    str(t.count("missing")),
                    str(t.count("extra")),
                    str(t.count("mismatched")),
                    str(t.transient),
                    f"{t.elapsed:.2f}s",
                    f"{t.rows_per_second:,.0f}",
                    "; ".join(flags),
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in lines
        ]
        out.extend(self._details(samples))
        verdict = "IDENTICAL" if self.identical else f"DIFFERENT: {self.divergent_rows} rows"
        out.append(
            f"{verdict} — {len(self.tables)} tables, {self.rows} rows in {self.elapsed:.2f}s "
            f"({self.rows / self.elapsed if self.elapsed else 0:,.0f} rows/s), "
            f"authoritative: {self.authoritative}"
        )
        return "\n".join(out)

    def _details(self, samples: int) -> list[str]:
        out: list[str] = []
        for t in self.tables:
            for note in t.inexact:
                out.append(f"  {t.name}: inexact: {note}")
            for note in t.notes:
                out.append(f"  {t.name}: {note}")
            for kind, items in t.samples(samples).items():
                for item in items:
                    cols = f" columns {', '.join(item['columns'])}" if "columns" in item else ""
                    what = item.get("key", item.get("row"))
                    out.append(f"  {t.name}: {kind} {'row' if t.keyless else 'key'} {what}{cols}")
        return out
