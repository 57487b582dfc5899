"""Which columns and key a table is compared on, and the SQL each side runs for it.

Side A is the authoritative store, side B the other one: ``missing`` means present on A
only.  Columns present on one side only are left out (schema parity reports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comparator.normalize import ColumnPlan, plan_column, quote_ident
from comparator.sources.base import TableQuery, TableShape


@dataclass
class TablePlan:
    name: str  # table name (as on side A)
    schema: str  # side A's schema / database
    a: TableQuery
    b: TableQuery
    columns: list[ColumnPlan]
    key: list[str]
    row_compare: bool  # some column (JSON across engines) is only comparable in Python
    inexact: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def keyless(self) -> bool:
        return not self.key

    @property
    def key_positions(self) -> list[int]:
        names = [c.name for c in self.columns]
        return [names.index(k) for k in self.key]

    @property
    def estimated_rows(self) -> int:
        return max(self.a.shape.estimated_rows, self.b.shape.estimated_rows)


def make_plan(a: TableShape, b: TableShape, a_label: str, b_label: str) -> TablePlan:
    # Across engines column names match case-insensitively (PostgreSQL folds them).
    fold = a.columns[0].engine != b.columns[0].engine

    def norm(name: str) -> str:
        return name.lower() if fold else name

    b_cols = {norm(c.name): c for c in b.columns}
    common = [c for c in a.columns if norm(c.name) in b_cols]
    notes = []
    a_names = {norm(c.name) for c in a.columns}
    only_a = [c.name for c in a.columns if norm(c.name) not in b_cols]
    only_b = [c.name for c in b.columns if norm(c.name) not in a_names]
    if only_a:
        notes.append(f"columns only in {a_label} (not compared): {', '.join(only_a)}")
    if only_b:
        notes.append(f"columns only in {b_label} (not compared): {', '.join(only_b)}")
    plans = [plan_column(c, b_cols[norm(c.name)]) for c in common]
    on_b = {c.name: b_cols[norm(c.name)].name for c in common}  # A's name -> B's name
    names = {c.name for c in common}
    key = a.key if a.key and set(a.key) <= names else []
    from_b = {v: k for k, v in on_b.items()}
    if not key and b.key and set(b.key) <= set(from_b):
        key = [from_b[k] for k in b.key]
    row_compare = any(p.row_compare for p in plans)
    same_pg = a.columns[0].engine == b.columns[0].engine == "postgresql"
    # Identical declared types on two PostgreSQL stores: native 64-bit hashes agree.
    pg64 = same_pg and all(c.type == b_cols[norm(c.name)].type for c in common)
    extra = [p for p in plans if p.row_compare]

    def query(shape: TableShape, exprs: list[str], rename: dict[str, str]) -> TableQuery:
        engine = shape.columns[0].engine
        return TableQuery(
            shape=shape,
            columns=[rename.get(p.name, p.name) for p in plans],
            exprs=exprs,
            safe=[p.safe for p in plans],
            key=[rename.get(k, k) for k in key],
            extra_exprs=[quote_ident(engine, rename.get(p.name, p.name)) for p in extra],
            pg64=pg64,
        )

    return TablePlan(
        name=a.name,
        schema=a.schema,
        a=query(a, [p.old_sql for p in plans], {}),
        b=query(b, [p.new_sql for p in plans], on_b),
        columns=plans,
        key=key,
        row_compare=row_compare,
        inexact=[f"{p.name}: {p.inexact}" for p in plans if p.inexact],
        notes=notes,
    )
