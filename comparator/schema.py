"""Schema parity: what differs between the old and the new store's tables, and how much.

``compare_schema`` reads both catalogs (``_schema_catalog``) and walks the tables
of the old store: tables and columns, each column's type through the mapping
across engines (``_schema_types``), nullability, defaults, the primary key,
unique constraints and indexes.  Unique constraints and indexes compare by
their column lists, never by name (engines and tools name them differently);
a MariaDB unique key and a PostgreSQL unique constraint are the same thing.

Severity says what the difference does to a migration:

- ``critical``: the new store cannot take what the old one has (a missing table
  or column, an unrelated type, a different primary key);
- ``high``: mirrored writes may fail or store other values (narrowed type, a new
  NOT NULL, a different default, a unique key on one side only, a character set
  that is not utf8mb4, MariaDB's ON UPDATE current_timestamp with no twin);
- ``medium``: values fit but may behave differently, or reads get slower (a
  missing index, a time zone change, NOT NULL dropped, another collation);
- ``low``: harmless but different (a wider type, an extra index or table, the
  column order).

Character sets and collations compare between stores of one engine only.
Check constraints, foreign keys, triggers and partitioning are not compared.

Names compare exactly between two stores of one engine and case-insensitively
across engines (PostgreSQL folds unquoted names to lower case).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from comparator._schema_catalog import (
    ColumnInfo,
    StoreConn,
    TableInfo,
    connect,
    default_schema,
    read_tables,
    select_tables,
)
from comparator._schema_types import SEVERITIES, grade_types, normalize_default, parse
from comparator.dsn import StoreDsn


@dataclass(frozen=True, slots=True)
class SchemaFinding:
    table: str
    column: str | None
    what: str  # table, column, type, nullable, default, primary_key, unique, index
    old: str | None
    new: str | None
    severity: str


@dataclass
class SchemaReport:
    old: str  # redacted DSNs
    new: str
    tables_compared: int = 0
    findings: list[SchemaFinding] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.findings

    @property
    def compatible(self) -> bool:
        """No finding that stops a migration (only ``medium`` and ``low`` ones)."""
        return not any(f.severity in ("critical", "high") for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def to_json(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "identical": self.identical,
            "compatible": self.compatible,
            "tables_compared": self.tables_compared,
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
        }

    def render(self) -> str:
        n = self.tables_compared
        head = f"schema parity: {self.old} -> {self.new}, {n} table{'' if n == 1 else 's'}"
        if self.identical:
            return f"{head}: identical\n"
        rows = [("severity", "table", "column", "what", "old", "new")]
        order = {s: i for i, s in enumerate(SEVERITIES)}
        for f in sorted(self.findings, key=lambda f: (order[f.severity], f.table, f.column or "")):
            rows.append((f.severity, f.table, f.column or "", f.what, f.old or "-", f.new or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        summary = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        verdict = "compatible" if self.compatible else "NOT compatible"
        return (
            "\n".join([f"{head}: {len(self.findings)} differences ({summary}), {verdict}", *lines])
            + "\n"
        )


async def compare_schema(
    old: StoreDsn,
    new: StoreDsn,
    schema: str | None,
    tables: list[str] | None,
    exclude: list[str],
) -> SchemaReport:
    """Compare the old store's tables (``tables``/``exclude`` filtered) with the new one's."""
    report = SchemaReport(old.redacted(), new.redacted())
    old_conn = await connect(old)
    try:
        new_conn = await connect(new)
    except BaseException:
        await old_conn.close()
        raise
    # A schema given for two MariaDB stores names their database; for a mixed pair it
    # is the PostgreSQL side's, and MariaDB keeps the DSN's database.
    both_mysql = old.engine == new.engine == "mysql"
    try:
        old_tables = await _read(old_conn, old, schema, tables, exclude, both_mysql)
        new_tables = await _read(new_conn, new, schema, tables, exclude, both_mysql)
    finally:
        await old_conn.close()
        await new_conn.close()
    _Comparer(report, old.engine, new.engine).tables(old_tables, new_tables)
    return report


async def _read(
    conn: StoreConn,
    dsn: StoreDsn,
    schema: str | None,
    tables: list[str] | None,
    exclude: list[str],
    both_mysql: bool,
) -> dict[str, TableInfo]:
    found = await read_tables(
        conn, schema if schema and both_mysql else default_schema(dsn, schema)
    )
    return {n: found[n] for n in select_tables(list(found), tables, exclude)}


class _Comparer:
    def __init__(self, report: SchemaReport, old_engine: str, new_engine: str) -> None:
        self.report = report
        self.old_engine, self.new_engine = old_engine, new_engine
        self.cross = old_engine != new_engine

    def _name(self, name: str) -> str:
        return name.lower() if self.cross else name

    def _add(
        self, table: str, column: str | None, what: str, old: Any, new: Any, severity: str
    ) -> None:
        text = [None if v is None else str(v) for v in (old, new)]
        self.report.findings.append(SchemaFinding(table, column, what, text[0], text[1], severity))

    def tables(self, old: dict[str, TableInfo], new: dict[str, TableInfo]) -> None:
        new_by = {self._name(n): t for n, t in new.items()}
        for name, table in old.items():
            other = new_by.pop(self._name(name), None)
            if other is None:
                self._add(name, None, "table", "present", "missing", "critical")
                continue
            self.report.tables_compared += 1
            self.table(table, other)
        for other in new_by.values():
            self._add(other.name, None, "table", "missing", "present", "low")

    def table(self, old: TableInfo, new: TableInfo) -> None:
        new_cols = {self._name(c.name): c for c in new.columns}
        for col in old.columns:
            other = new_cols.pop(self._name(col.name), None)
            if other is None:
                self._add(old.name, col.name, "column", "present", "missing", "critical")
            else:
                self.column(old.name, col, other)
        self._order(old, new)
        for col in new_cols.values():
            # A NOT NULL column without a default on new only: mirrored inserts fail.
            blocking = not col.nullable and col.default is None and not col.auto_increment
            self._add(
                old.name, col.name, "column", "missing", "present", "high" if blocking else "low"
            )
        self.keys(old, new)

    def _order(self, old: TableInfo, new: TableInfo) -> None:
        """Column order matters to whole-row comparisons (keyless tables, SELECT *)."""
        new_names = [self._name(c.name) for c in new.columns]
        old_names = [self._name(c.name) for c in old.columns]
        common_old = [n for n in old_names if n in new_names]
        common_new = [n for n in new_names if n in old_names]
        if common_old != common_new:
            self._add(
                old.name, None, "column_order", ", ".join(common_old), ", ".join(common_new), "low"
            )

    def column(self, table: str, old: ColumnInfo, new: ColumnInfo) -> None:
        old_t, new_t = parse(self.old_engine, old), parse(self.new_engine, new)
        severity = grade_types(old_t, new_t, self.cross)
        if old.on_update != new.on_update:
            # Rows updated through the proxy get a new timestamp on one store only.
            self._add(table, old.name, "on_update", old.on_update, new.on_update, "high")
        if not self.cross:
            self._text_rules(table, old, new)
        if old.generated != new.generated:
            self._add(table, old.name, "generated", old.generated, new.generated, "high")
        if severity is not None:
            self._add(table, old.name, "type", _type_text(old), _type_text(new), severity)
        if old.nullable != new.nullable:
            null = {True: "NULL", False: "NOT NULL"}
            # New rejecting NULLs the old store accepts breaks mirrored writes.
            sev = "high" if old.nullable else "medium"
            self._add(table, old.name, "nullable", null[old.nullable], null[new.nullable], sev)
        old_d, new_d = normalize_default(old, old_t), normalize_default(new, new_t)
        if old_d != new_d and not (old.generated or new.generated):
            # Inserts that omit the column would store different values on each side.
            self._add(table, old.name, "default", old_d, new_d, "high")

    def _text_rules(self, table: str, old: ColumnInfo, new: ColumnInfo) -> None:
        """Character set and collation (one engine: they do not compare across engines)."""
        if old.charset != new.charset:
            # Only utf8mb4 holds every character: anything else may refuse some.
            sev = "high" if old.charset == "utf8mb4" or new.charset != "utf8mb4" else "low"
            self._add(table, old.name, "charset", old.charset, new.charset, sev)
        elif old.collation != new.collation:
            # Case and accent rules decide unique keys and ordering.
            self._add(table, old.name, "collation", old.collation, new.collation, "medium")

    def _cols(self, cols: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self._name(c) for c in cols)

    def keys(self, old: TableInfo, new: TableInfo) -> None:
        old_pk, new_pk = self._cols(old.primary_key), self._cols(new.primary_key)
        if old_pk != new_pk:
            sev = "high" if not old_pk else "critical"
            self._add(old.name, None, "primary_key", _fmt(old_pk), _fmt(new_pk), sev)
        for unique, missing_sev, extra_sev in ((True, "high", "high"), (False, "medium", "low")):
            old_set = {
                _sig(self._cols(i.columns), i.predicate) for i in old.indexes if i.unique == unique
            }
            new_set = {
                _sig(self._cols(i.columns), i.predicate) for i in new.indexes if i.unique == unique
            }
            what = "unique" if unique else "index"
            for sig in sorted(old_set - new_set):
                self._add(old.name, None, what, sig, None, missing_sev)
            for sig in sorted(new_set - old_set):
                self._add(old.name, None, what, None, sig, extra_sev)


def _type_text(col: ColumnInfo) -> str:
    # MariaDB reports its JSON columns as longtext; say what the user declared.
    return "json" if col.is_json and col.type == "longtext" else col.type


def _fmt(cols: tuple[str, ...]) -> str | None:
    return f"({', '.join(cols)})" if cols else None


def _sig(cols: tuple[str, ...], predicate: str | None) -> str:
    text = f"({', '.join(cols)})"
    return f"{text} WHERE {predicate}" if predicate else text
