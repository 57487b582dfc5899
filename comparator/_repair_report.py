"""What a repair or an undo changed (or, in a dry run, would change), per table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comparator._repair_apply import TableCounts


@dataclass
class _ChangeReport:
    target: str
    undo_path: str | None
    dry_run: bool = False
    tables: dict[str, TableCounts] = field(default_factory=dict)
    elapsed: float = 0.0

    def table(self, schema: str, name: str) -> TableCounts:
        return self.tables.setdefault(f"{schema}.{name}", TableCounts())

    def totals(self) -> TableCounts:
        total = TableCounts()
        for counts in self.tables.values():
            total.add(counts)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "undo_path": self.undo_path,
            "elapsed_seconds": round(self.elapsed, 3),
            "tables": {name: vars(c) for name, c in sorted(self.tables.items())},
            "totals": vars(self.totals()),
        }

    def _lines(self, title: str) -> str:
        rows: list[tuple[str, ...]] = [("table", "inserted", "updated", "deleted", "unchanged")]
        for name, c in sorted(self.tables.items()):
            rows.append((name, *(str(n) for n in (c.inserted, c.updated, c.deleted, c.unchanged))))
        t = self.totals()
        rows.append(("total", *(str(n) for n in (t.inserted, t.updated, t.deleted, t.unchanged))))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        body = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        return "\n".join([title, *body]) + "\n"


@dataclass
class RepairReport(_ChangeReport):
    authoritative: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"authoritative": self.authoritative, **super().to_json()}

    def render(self) -> str:
        if self.dry_run:
            title = (
                f"repair DRY RUN {self.authoritative} -> {self.target}: nothing written; "
                "these changes would be made (add --apply):"
            )
        else:
            title = f"repair {self.authoritative} -> {self.target}: undo file {self.undo_path}"
        return self._lines(title)


@dataclass
class UndoReport(_ChangeReport):
    def render(self) -> str:
        return self._lines(f"undo of {self.undo_path} on {self.target}: rows restored")
