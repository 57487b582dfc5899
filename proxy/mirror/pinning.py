"""Value pinning: the mirror writes the values the authoritative store generated.

How this works: a write whose values the store generates -- a volatile call
(``now()``, ``CURRENT_TIMESTAMP``, ``random()``, ``gen_random_uuid()``,
``nextval()``...) in the statement, or an INSERT that leaves a column with such a
default (serial, identity, ``DEFAULT now()``) to the store -- is sent to the
authoritative store with ``RETURNING <the client's list>, NULL AS
__shadowproxy_pin, <table>.*`` appended.  The relay hides the added columns from
the client (everything from the marker on) and keeps them: they are the rows as
the store wrote them.  The mirror then writes those row images instead of
re-running the statement: an INSERT of the exact rows (an upsert for ON
CONFLICT DO UPDATE), or an UPDATE / DELETE of each row by its primary key.
Values travel in the format and bytes the store sent them, so no type is ever
decoded or re-encoded.

A write that needs pinning but cannot be pinned this way (an UPDATE of a table
without a primary key, one that changes the key, a writable CTE, several
statements in one query...) is mirrored as it is and reported as an
``unpinnable`` divergence, with the unit kept in the rejected journal for repair.

``analyze`` is pure (catalog in, plan out) and cached per statement text; the
catalog (column defaults, identity and generated columns, primary keys) is read
from the mirror store at start and again after DDL.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, OnConflictAction
from pglast.stream import RawStream

from proxy.mirror.unit import Item, ItemKind
from proxy.wire.pg._rows import bind_body, parse_body

log = logging.getLogger(__name__)

MARKER = "__shadowproxy_pin"
# Calls whose value is the same on both stores for the same arguments and session
# settings.  Anything else (and every SQL value function: CURRENT_TIMESTAMP,
# CURRENT_USER...) is pinned; pinning something that did not need it costs only a
# little output.
_DETERMINISTIC = frozenset(
    """abs ceil ceiling floor round trunc mod power sqrt exp ln log sign div gcd lcm
    lower upper length char_length octet_length substr substring trim btrim ltrim rtrim
    lpad rpad replace concat concat_ws left right split_part strpos position reverse
    repeat initcap format md5 sha224 sha256 sha384 sha512 encode decode quote_literal
    quote_ident quote_nullable regexp_replace regexp_match regexp_split_to_array translate
    to_char to_number to_date to_timestamp date_trunc date_part extract make_date
    make_time make_timestamp make_timestamptz make_interval justify_days
    justify_hours justify_interval jsonb_build_object json_build_object jsonb_build_array
    json_build_array jsonb_set jsonb_insert jsonb_strip_nulls to_json to_jsonb
    row_to_json array_to_json jsonb_object json_object array_append array_prepend
    array_cat array_remove array_replace array_length array_position cardinality
    array_to_string string_to_array unnest generate_series count sum min max avg
    array_agg string_agg jsonb_agg json_agg jsonb_object_agg bool_and bool_or every
    coalesce nullif greatest least int2 int4 int8 float4 float8 numeric text varchar
    bool date timestamp timestamptz interval uuid jsonb json bytea inet cidr pg_sleep""".split()  # noqa: SIM905
)


class Shape(enum.Enum):
    INSERT = "insert"
    UPSERT = "upsert"  # INSERT ... ON CONFLICT DO UPDATE
    INSERT_IGNORE = "insert-ignore"  # INSERT ... ON CONFLICT DO NOTHING
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: tuple[str, ...]
    generated: frozenset[str]  # GENERATED ALWAYS AS (...) STORED: never written
    always: frozenset[str]  # GENERATED ALWAYS AS IDENTITY: inserted, never updated
    volatile_defaults: frozenset[str]  # serial, identity, DEFAULT now(), uuid...
    key: tuple[str, ...]  # primary key, () if none


@dataclass(slots=True)
class Catalog:
    tables: dict[str, Table] = field(default_factory=dict)  # "name" and "schema.name"

    def find(self, schema: str | None, name: str) -> Table | None:
        return self.tables.get(f"{schema}.{name}" if schema else name)


@dataclass(frozen=True, slots=True)
class Plan:
    shape: Shape
    sql: str  # the statement the authoritative store runs (RETURNING extended)
    schema: str | None
    table: str
    client_returns: bool  # the client asked for RETURNING itself
    # Columns of the client's own RETURNING (-1: it has a star; then the table's
    # width tells where the marker is).
    client_cols: int
    width: int  # columns of the table (what ``table.*`` returns)
    conflict: tuple[str, ...] = ()  # UPSERT: the conflict target columns

    def keep(self, ncols: int) -> int:
        """How many leading columns of a returned row are the client's."""
        return self.client_cols if self.client_cols >= 0 else ncols - 1 - self.width


@dataclass(frozen=True, slots=True)
class Unpinnable:
    reason: str


def _is_volatile(node: Any) -> bool:
    """Some call or value function under ``node`` may differ between the stores."""
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (list, tuple)):
            stack.extend(n)
            continue
        if not isinstance(n, ast.Node):
            continue
        if isinstance(n, ast.SQLValueFunction):
            return True
        if isinstance(n, ast.TypeCast) and _special_time_literal(n.arg):
            return True
        if isinstance(n, ast.FuncCall):
            name = _children_of(n)["funcname"][-1].sval.lower()
            if name not in _DETERMINISTIC:
                return True
        stack.extend(_children_of(n).values())
    return False


# Date/time input strings each store reads from its own clock ('now'::timestamptz).
_CLOCK_WORDS = frozenset(("now", "today", "tomorrow", "yesterday"))


def _special_time_literal(arg: Any) -> bool:
    if not isinstance(arg, ast.A_Const) or arg.isnull:
        return False
    val = arg.val
    return isinstance(val, ast.String) and (val.sval or "").strip().lower() in _CLOCK_WORDS


def _children_of(n: Any) -> dict[str, Any]:
    """The node's attributes that are nodes or lists of nodes."""
    out = {}
    for slot in n.__slots__:
        value = getattr(n, slot, None)
        if isinstance(value, (ast.Node, list, tuple)):
            out[slot] = value
    return out


_SERIALS = frozenset(("serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"))


def _numbers_rows(coldef: Any) -> bool:
    """An added column whose value for the existing rows each store makes up."""
    if _is_volatile(coldef):
        return True
    names = [n.sval for n in coldef.typeName.names] if coldef.typeName is not None else []
    if names and names[-1] in _SERIALS:
        return True
    return any(c.contype == ConstrType.CONSTR_IDENTITY for c in coldef.constraints or ())


def default_is_volatile(expr: str) -> bool:
    """A column default as pg_get_expr prints it."""
    try:
        stmt = parse_sql(f"SELECT {expr}")[0].stmt
    except Exception:
        return True
    return _is_volatile(stmt)


def _has_set_to_default(node: Any) -> bool:
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (list, tuple)):
            stack.extend(n)
        elif isinstance(n, ast.SetToDefault):
            return True
        elif isinstance(n, ast.Node) and not isinstance(n, ast.SelectStmt):
            stack.extend(_children_of(n).values())
        elif isinstance(n, ast.SelectStmt):
            stack.append(n.valuesLists)
            stack.append(n.targetList)
    return False


def analyze(sql: str, catalog: Catalog) -> Plan | Unpinnable | None:
    """How the write ``sql`` is mirrored: None as it is, a Plan, or Unpinnable."""
    try:
        stmts = parse_sql(sql)
    except Exception:
        return None  # the store will refuse it too
    if len(stmts) != 1:
        if any(_is_volatile(s.stmt) for s in stmts):
            return Unpinnable("several statements in one query")
        return None
    stmt = stmts[0].stmt
    if isinstance(stmt, ast.InsertStmt):
        return _insert(stmt, catalog)
    if isinstance(stmt, (ast.UpdateStmt, ast.DeleteStmt)):
        return _update_or_delete(stmt, catalog)
    if isinstance(stmt, ast.CopyStmt) and stmt.is_from and stmt.relation is not None:
        rel: Any = stmt.relation
        table = catalog.find(rel.schemaname, rel.relname)
        named = {a.sval for a in stmt.attlist or ()}
        if table is not None and stmt.attlist and table.volatile_defaults - named:
            return Unpinnable("COPY FROM leaves generated values to the store")
        return None
    if isinstance(stmt, ast.MergeStmt) and _is_volatile(stmt):
        return Unpinnable("MERGE with generated values")
    if isinstance(stmt, ast.AlterTableStmt):
        # ADD COLUMN ... DEFAULT now() / gen_random_uuid() fills the existing rows
        # with values of each store's own; other DDL writes no row.
        for cmd in stmt.cmds or ():
            if cmd.subtype == AlterTableType.AT_AddColumn and _numbers_rows(cmd.def_):
                return Unpinnable("ADD COLUMN with a generated default fills existing rows")
        return None
    into = isinstance(stmt, ast.CreateTableAsStmt) or (
        isinstance(stmt, ast.SelectStmt) and stmt.intoClause is not None
    )
    if into and _is_volatile(stmt):
        return Unpinnable("CREATE TABLE AS / SELECT INTO with generated values")
    return None  # other statements write no generated value into a row


def _insert(stmt: Any, catalog: Catalog) -> Plan | Unpinnable | None:
    rel = stmt.relation
    table = catalog.find(rel.schemaname, rel.relname)
    named = [c.name for c in stmt.cols or ()]
    volatile = (
        (stmt.selectStmt is not None and _is_volatile(stmt.selectStmt))
        or (stmt.withClause is not None and _is_volatile(stmt.withClause))
        or (stmt.onConflictClause is not None and _is_volatile(stmt.onConflictClause))
    )
    if table is None:
        return Unpinnable("table not in the mirror store's catalog") if volatile else None
    if not volatile:
        omitted = table.volatile_defaults.difference(named) if named else set()
        if stmt.selectStmt is None:  # DEFAULT VALUES
            omitted = set(table.volatile_defaults)
        elif not named:
            # No column list: the values fill the first columns; a short list leaves
            # the rest to their defaults.  Counting them is not worth it: pin.
            omitted = set(table.volatile_defaults)
        volatile = bool(omitted) or (
            bool(table.volatile_defaults) and _has_set_to_default(stmt.selectStmt)
        )
    if not volatile:
        return None
    if stmt.withClause is not None:
        return Unpinnable("INSERT with a WITH clause and generated values")
    shape = Shape.INSERT
    conflict: tuple[str, ...] = ()
    occ = stmt.onConflictClause
    if occ is not None:
        if occ.action == OnConflictAction.ONCONFLICT_NOTHING:
            shape = Shape.INSERT_IGNORE
        else:
            shape = Shape.UPSERT
            infer = occ.infer
            if infer is not None and infer.indexElems:
                conflict = tuple(e.name for e in infer.indexElems if e.name)
            if not conflict:
                if table is None or not table.key:
                    return Unpinnable("ON CONFLICT DO UPDATE without a known key")
                conflict = table.key
    return _plan(stmt, shape, rel, table, conflict)


def _update_or_delete(stmt: Any, catalog: Catalog) -> Plan | Unpinnable | None:
    if not _is_volatile(stmt):
        return None
    rel = stmt.relation
    table = catalog.find(rel.schemaname, rel.relname)
    verb = "UPDATE" if isinstance(stmt, ast.UpdateStmt) else "DELETE"
    if table is None or not table.key:
        return Unpinnable(f"{verb} with generated values on a table without a primary key")
    if stmt.withClause is not None:
        return Unpinnable(f"{verb} with a WITH clause and generated values")
    if isinstance(stmt, ast.UpdateStmt):
        assigned = {t.name for t in stmt.targetList or ()}
        if assigned.intersection(table.key):
            return Unpinnable("UPDATE of primary key columns with generated values")
        return _plan(stmt, Shape.UPDATE, rel, table, ())
    return _plan(stmt, Shape.DELETE, rel, table, ())


def _has_star(node: Any) -> bool:
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (list, tuple)):
            stack.extend(n)
        elif isinstance(n, ast.A_Star):
            return True
        elif isinstance(n, ast.Node):
            stack.extend(_children_of(n).values())
    return False


def _plan(stmt: Any, shape: Shape, rel: Any, table: Table, conflict: tuple[str, ...]) -> Plan:
    alias = rel.alias.aliasname if rel.alias is not None else rel.relname
    # The table's columns by name, in the mirror store's catalog order: the row
    # image lines up with the mirror's columns even if the stores order them
    # differently.
    image = tuple(
        ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(sval=alias), ast.String(sval=c))))
        for c in table.columns
    )
    marker = ast.ResTarget(name=MARKER, val=ast.A_Const(isnull=True))
    clause = stmt.returningClause
    client = tuple(clause.exprs) if clause is not None and clause.exprs else ()
    stmt.returningClause = ast.ReturningClause(exprs=(*client, marker, *image))
    return Plan(
        shape=shape,
        sql=RawStream()(stmt),
        schema=rel.schemaname,
        table=rel.relname,
        client_returns=bool(client),
        client_cols=-1 if _has_star(client) else len(client),
        width=len(table.columns),
        conflict=conflict,
    )


# --------------------------------------------------------------- mirror statements

_MAX_PARAMS = 65535


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _target(plan: Plan) -> str:
    rel = _ident(plan.table)
    return f"{_ident(plan.schema)}.{rel}" if plan.schema else rel


def image_items(plan: Plan, table: Table, rows: list[list[bytes | None]], fmt: int) -> list[Item]:
    """The mirror's statements writing ``rows`` (the table's columns, in order)."""
    if plan.shape in (Shape.UPDATE, Shape.DELETE):
        sql, body, tag, pick = _key_statement(plan, table)
        return [
            Item(
                ItemKind.EXECUTE,
                sql,
                parse_body=body,
                bind_body=bind_body([row[i] for i in pick], fmt),
                tags=[tag],
            )
            for row in rows
        ]
    per_row = len(_insert_statement(plan, table, 1)[2])  # cached: the columns written
    chunk = max(1, _MAX_PARAMS // max(per_row, 1))
    items = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        sql, body, written = _insert_statement(plan, table, len(part))
        values: list[bytes | None] = []
        for row in part:
            values.extend([row[i] for i in written])
        items.append(
            Item(
                ItemKind.EXECUTE,
                sql,
                parse_body=body,
                bind_body=bind_body(values, fmt),
                tags=[f"INSERT 0 {len(part)}"],
            )
        )
    return items


# The mirror statements' texts, by what they depend on only (plan, table, rows
# in the statement): building them was most of image_items' cost, and a
# workload repeats a few shapes.  Keyed by identity (hashing the frozen
# dataclasses runs their generated __hash__ in the interpreter), with the
# objects kept in the entry so an id is never taken for a dead object's.  A
# table changed by DDL is a new Table, so a new entry; the cache is simply
# emptied when it grows past its bound.
_STATEMENTS: dict[tuple[int, int, int], tuple[Plan, Table, Any]] = {}
_STATEMENTS_MAX: Final = 4096


def _cached(plan: Plan, table: Table, nrows: int) -> Any:
    hit = _STATEMENTS.get((id(plan), id(table), nrows))
    if hit is not None and hit[0] is plan and hit[1] is table:
        return hit[2]
    return None


def _remember(plan: Plan, table: Table, nrows: int, value: Any) -> Any:
    if len(_STATEMENTS) >= _STATEMENTS_MAX:
        _STATEMENTS.clear()
    _STATEMENTS[(id(plan), id(table), nrows)] = (plan, table, value)
    return value


def _written(table: Table) -> list[int]:
    return [i for i, c in enumerate(table.columns) if c not in table.generated]


def _insert_statement(plan: Plan, table: Table, nrows: int) -> tuple[str, bytes, list[int]]:
    """INSERT of ``nrows`` row images: text, Parse body, and which of a row's
    values the parameters are (every column but the generated ones)."""
    hit = _cached(plan, table, nrows)
    if hit is not None:
        return hit
    written = _written(table)
    cols = [table.columns[i] for i in written]
    per_row = len(cols)
    head = f"INSERT INTO {_target(plan)} ({', '.join(map(_ident, cols))}) OVERRIDING SYSTEM VALUE VALUES "
    tail = ""
    if plan.shape is Shape.UPSERT:
        updates = [c for c in cols if c not in plan.conflict and c not in table.always]
        action = (
            "UPDATE SET " + ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in updates)
            if updates
            else "NOTHING"
        )
        tail = f" ON CONFLICT ({', '.join(map(_ident, plan.conflict))}) DO {action}"
    elif plan.shape is Shape.INSERT_IGNORE:
        tail = " ON CONFLICT DO NOTHING"
    groups = [
        "(" + ", ".join(f"${r * per_row + k + 1}" for k in range(per_row)) + ")"
        for r in range(nrows)
    ]
    sql = head + ", ".join(groups) + tail
    return _remember(plan, table, nrows, (sql, parse_body(sql, nrows * per_row), written))


def _key_statement(plan: Plan, table: Table) -> tuple[str, bytes, str, list[int]]:
    """UPDATE or DELETE of one row by its primary key: text, Parse body, tag, and
    which of the row's values the parameters are."""
    hit = _cached(plan, table, -1)
    if hit is not None:
        return hit
    key_at = [table.columns.index(k) for k in table.key]
    where = " AND ".join(f"{_ident(k)} = ${i + 1}" for i, k in enumerate(table.key))
    if plan.shape is Shape.DELETE:
        sql = f"DELETE FROM {_target(plan)} WHERE {where}"
        tag = "DELETE 1"
        pick = key_at
    else:
        sets = [
            i
            for i in _written(table)
            if table.columns[i] not in table.key and table.columns[i] not in table.always
        ]
        n = len(table.key)
        assign = ", ".join(f"{_ident(table.columns[i])} = ${n + j + 1}" for j, i in enumerate(sets))
        if not sets:  # nothing but the key to write: still touch the row (same rowcount)
            assign = f"{_ident(table.key[0])} = {_ident(table.key[0])}"
        sql = f"UPDATE {_target(plan)} SET {assign} WHERE {where}"
        tag = "UPDATE 1"
        pick = key_at + sets
    return _remember(plan, table, -1, (sql, parse_body(sql, len(pick)), tag, pick))


# ------------------------------------------------------------------------- catalog

CATALOG_SQL = """
SELECT n.nspname, c.relname, a.attname, a.attgenerated <> '' AS generated,
       a.attidentity <> '' AS identity, a.attidentity = 'a' AS always, pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       coalesce(a.attnum = ANY (i.indkey), false) AS in_key,
       array_position(i.indkey::int2[], a.attnum) AS key_pos
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY n.nspname, c.relname, a.attnum
"""


def build_catalog(rows: list[Any]) -> Catalog:
    """Catalog from the rows of CATALOG_SQL (schema, table, column, ...)."""
    grouped: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        grouped.setdefault((r[0], r[1]), []).append(r)
    catalog = Catalog()
    for (schema, name), cols in grouped.items():
        keyed = sorted((r[8], r[2]) for r in cols if r[7])
        table = Table(
            schema=schema,
            name=name,
            columns=tuple(r[2] for r in cols),
            generated=frozenset(r[2] for r in cols if r[3]),
            always=frozenset(r[2] for r in cols if r[5]),
            volatile_defaults=frozenset(
                r[2] for r in cols if r[4] or (r[6] is not None and default_is_volatile(r[6]))
            ),
            key=tuple(k for _, k in keyed),
        )
        catalog.tables[f"{schema}.{name}"] = table
        # Unqualified names resolve to public (the default search_path) first.
        if schema == "public" or name not in catalog.tables:
            catalog.tables[name] = table
    return catalog


class Pinner:
    """The catalog in use and the plans made with it (per statement text)."""

    _MAX_PLANS = 20_000

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.version = 0
        self._plans: dict[str, Plan | Unpinnable | None] = {}

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.version += 1
        self._plans.clear()

    def plan(self, sql: str) -> Plan | Unpinnable | None:
        try:
            return self._plans[sql]
        except KeyError:
            pass
        found = analyze(sql, self.catalog)
        if len(self._plans) >= self._MAX_PLANS:
            self._plans.clear()
        self._plans[sql] = found
        return found

    def table(self, plan: Plan) -> Table | None:
        return self.catalog.find(plan.schema, plan.table)
