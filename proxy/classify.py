"""Statement classification: what kind of statement a SQL text is.

How this works
--------------
``classify(sql)`` answers from a bounded cache keyed by the exact text, so a
repeated text (prepared statements, ORM queries) costs one dict lookup.  On a
miss the text is split into statements only if it has a ';' before its end, and
each statement is classified by its leading keyword (skipping comments and
opening parentheses).  Most keywords decide alone.  SELECT, WITH, VALUES,
EXPLAIN, COPY and DECLARE need the statement's shape: a SELECT with no '(' and
no FOR/INTO word is a plain read without parsing (the hot path); everything
else is parsed by libpg_query (pglast) into JSON and walked for locking
clauses, SELECT INTO, data-modifying CTEs and function calls.  A call to a
function that is not known to be free of side effects makes the statement a
write.  Several statements in one text take the strongest kind:
DDL > WRITE > SESSION > TXN > READ.

When in doubt the answer is WRITE: a write taken for a read would be lost to
the mirror; a read taken for a write only costs a mirrored no-op.

Known limits: a side effect hidden behind a view, a trigger on SELECT (rules),
a user-defined operator or attribute-notation call (``t.f``) is not seen.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import Any, Final, Generic, TypeVar

import orjson
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.parser import ParseError, normalize, parse_sql_json, scan, split


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    TXN = "txn"  # BEGIN / COMMIT / ROLLBACK / SAVEPOINT ...
    SESSION = "session"  # SET / RESET / DISCARD / PREPARE / DEALLOCATE / LISTEN ...
    DDL = "ddl"

    # Members are singletons compared by identity: the identity hash is the C
    # slot, where Enum's own __hash__ is interpreted code run on every lookup of
    # a per-kind counter.
    __hash__ = object.__hash__


READ: Final = Kind.READ
WRITE: Final = Kind.WRITE
TXN: Final = Kind.TXN
SESSION: Final = Kind.SESSION
DDL: Final = Kind.DDL
_RANK: Final = {READ: 0, TXN: 1, SESSION: 2, WRITE: 3, DDL: 4}
# What libpg_query or the UTF-8 encoder may raise on hostile text.
_PARSE_ERRORS: Final = (ParseError, ValueError, RecursionError)

# --------------------------------------------------------------------------- cache

V = TypeVar("V")


class _TextCache(Generic[V]):
    """Results per exact statement text, bounded in entries and in characters.

    When either bound is reached the whole cache is cleared: cheaper than LRU
    bookkeeping on the hot path, and a cleared cache refills in one pass.
    """

    __slots__ = ("data", "chars", "max_entries", "max_chars")

    def __init__(self, max_entries: int = 20_000, max_chars: int = 16_000_000) -> None:
        self.data: dict[str, V] = {}
        self.chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def put(self, sql: str, value: V) -> None:
        size = len(sql)
        if size > self.max_chars // 16:  # a huge text would evict everything else
            return
        if len(self.data) >= self.max_entries or self.chars + size > self.max_chars:
            self.data.clear()
            self.chars = 0
        self.data[sql] = value
        self.chars += size


_kinds: _TextCache[Kind] = _TextCache()
_tables: Final[_TextCache[tuple[str, ...]]] = _TextCache()
_fingerprints: _TextCache[str] = _TextCache()
_relations: Final[_TextCache[tuple[str, ...]]] = _TextCache()
_shapes: Final[_TextCache[tuple[str, bool]]] = _TextCache()
_kind_get = _kinds.data.get  # the cache dict is cleared in place, never replaced

# ------------------------------------------------------------------------ keywords


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_HEAD_KINDS: Final[dict[str, Kind]] = {
    # EXECUTE runs a prepared statement whose kind the text does not show: a write.
    **dict.fromkeys(_words("insert update delete merge truncate call do lock refresh"), WRITE),
    **dict.fromkeys(_words("notify execute"), WRITE),
    **dict.fromkeys(_words("table show fetch move close"), READ),
    **dict.fromkeys(_words("begin start commit end rollback abort savepoint release"), TXN),
    **dict.fromkeys(_words("set reset discard prepare deallocate listen unlisten load"), SESSION),
    **dict.fromkeys(_words("create alter drop comment grant revoke security vacuum"), DDL),
    **dict.fromkeys(_words("analyze analyse cluster reindex checkpoint import reassign"), DDL),
}
_DML_NODES: Final = frozenset(("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"))
# Heads whose kind depends on the rest of the statement.
_SHAPE_HEADS: Final = frozenset(("select", "with", "values", "explain", "copy", "declare"))

_KNOWN_HEADS: Final = frozenset(_HEAD_KINDS) | _SHAPE_HEADS
_HEAD_WINDOW: Final = 32  # longer than any keyword plus a little indentation
_TRAILING = " \t\r\n;"
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")
_FOR_INTO: Final = re.compile(r"\b(?:for|into)\b")  # on lowercased text
_ANALYZE: Final = re.compile(r"\banaly[sz]e\b", re.IGNORECASE)


def _next_word(sql: str, pos: int = 0) -> tuple[str, int]:
    """The lowercased word at or after ``pos``, skipping blanks, comments and '('.

    Returns ``("", end)`` when nothing but blanks, comments and ';' remain, and
    ``("?", pos)`` when the next token is not a word.
    """
    n = len(sql)
    while pos < n:
        c = sql[pos]
        if c in " \t\r\n\f\v(;":
            pos += 1
        elif sql.startswith("--", pos):
            end = sql.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif sql.startswith("/*", pos):
            pos = _comment_end(sql, pos)
        else:
            m = _WORD.match(sql, pos)
            return (m.group().lower(), m.end()) if m else ("?", pos)
    return "", n


def _comment_end(sql: str, pos: int) -> int:
    """End of the (nestable) block comment that starts at ``pos``."""
    depth, pos, n = 0, pos, len(sql)
    while pos < n:
        if sql.startswith("/*", pos):
            depth, pos = depth + 1, pos + 2
        elif sql.startswith("*/", pos):
            depth, pos = depth - 1, pos + 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return n


# ----------------------------------------------------------------------- functions

# Calls with an effect beyond the statement's own result (state, locks, xids...).
_EFFECT_FUNCS: Final = frozenset(
    _words(
        """nextval setval set_config pg_notify txid_current pg_current_xact_id
        pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_switch_wal
        pg_create_restore_point pg_promote pg_export_snapshot pg_backup_start pg_backup_stop
        pg_start_backup pg_stop_backup setseed pg_import_system_collations
        pg_log_backend_memory_contexts loread lowrite pg_truncate_visibility_map pg_prewarm
        pg_stat_statements_reset"""
    )
)
_EFFECT_PREFIXES: Final = _words(
    """pg_advisory pg_try_advisory lo_ dblink pg_create_ pg_drop_ pg_copy_ pg_replication_
    pg_logical_ pg_stat_reset pg_file_ pg_wal_replay_"""
)
# Builtins known to be free of persistent effects (volatile ones like random() included).
_PURE_FUNCS: Final = frozenset(
    _words(
        """count sum avg min max every bool_and bool_or bit_and bit_or bit_xor stddev stddev_pop
        stddev_samp variance var_pop var_samp corr covar_pop covar_samp percentile_cont
        percentile_disc mode any_value range_agg range_intersect_agg row_number rank dense_rank
        percent_rank cume_dist ntile lag lead first_value last_value nth_value grouping

        coalesce nullif greatest least num_nulls num_nonnulls abs ceil ceiling floor round trunc
        sign sqrt cbrt power pow exp ln log log10 mod div pi degrees radians sin cos tan asin
        acos atan atan2 sinh cosh tanh width_bucket gcd lcm factorial scale min_scale trim_scale
        random random_normal

        length lower upper substr substring position strpos overlay trim btrim ltrim rtrim lpad
        rpad left right replace reverse repeat initcap translate split_part starts_with concat
        concat_ws format chr ascii char_length character_length octet_length bit_length
        quote_ident quote_literal quote_nullable md5 sha224 sha256 sha384 sha512 encode decode
        convert_to convert_from normalize hashtext unistr casefold get_byte get_bit crc32 xpath
        xpath_exists

        now clock_timestamp statement_timestamp transaction_timestamp timeofday age extract
        date_part date_trunc date_bin justify_days justify_hours justify_interval isfinite
        timezone overlaps

        unnest generate_series generate_subscripts cardinality string_to_array row_to_json
        lower_inc upper_inc lower_inf upper_inf isempty range_merge int4range int8range numrange
        tsrange tstzrange daterange multirange gen_random_uuid uuidv4 uuidv7 uuid_generate_v4
        uuid_extract_timestamp uuid_extract_version setweight strip numnode querytree
        plainto_tsquery phraseto_tsquery websearch_to_tsquery

        version current_setting current_database current_schema current_schemas current_user
        session_user current_role user pg_backend_pid currval lastval inet_client_addr
        inet_client_port inet_server_addr inet_server_port format_type obj_description
        col_description shobj_description txid_current_if_assigned txid_current_snapshot
        pg_current_xact_id_if_assigned pg_current_snapshot pg_sleep pg_sleep_for pg_sleep_until
        pg_typeof pg_collation_for pg_trigger_depth pg_listening_channels
        pg_notification_queue_usage pg_blocking_pids pg_safe_snapshot_blocking_pids
        pg_jit_available pg_my_temp_schema pg_is_other_temp_schema pg_client_encoding
        pg_tablespace_databases pg_filenode_relation pg_sequence_last_value pg_stat_file
        pg_mcv_list_items pg_column_compression pg_settings_get_flags

        int2 int4 int8 float4 float8 numeric text varchar bpchar bool date time timetz timestamp
        timestamptz interval uuid bytea json jsonb inet cidr macaddr oid regclass regtype regproc
        regprocedure regnamespace regrole name char money"""
    )
)
_PURE_PREFIXES: Final = _words(
    """json to_ array_ regexp_ string_ date_ make_ ts_ xml regr_ has_ pg_get_ pg_size_
    pg_relation_ pg_table_ pg_total_relation pg_indexes_ pg_database_ pg_tablespace_
    pg_column_size pg_encoding_ pg_char_to_ pg_describe_ pg_identify_ pg_has_ pg_is_
    pg_stat_get_ pg_postmaster_ pg_conf_ pg_last_ pg_wal_lsn_ pg_walfile_ pg_control_
    pg_current_wal_ pg_input_ pg_snapshot_ pg_visible_in_snapshot pg_xact_ txid_snapshot_
    txid_visible pg_options_ pg_show_ pg_ls_ pg_read_ pg_available_ pg_index_ pg_partition_"""
)
_PURE_SUFFIXES: Final = ("_is_visible",)
_SAFE_SCHEMAS = frozenset(("pg_catalog", "information_schema"))


def _pure_function(name: str) -> bool:
    if name in _EFFECT_FUNCS or name.startswith(_EFFECT_PREFIXES):
        return False
    return name in _PURE_FUNCS or name.startswith(_PURE_PREFIXES) or name.endswith(_PURE_SUFFIXES)


def _pure_call(funcname: list[Any]) -> bool:
    """A FuncCall's ``funcname`` (JSON list of String nodes) names a pure builtin."""
    parts = [p.get("String", {}).get("sval", "") for p in funcname]
    if not parts or (len(parts) > 1 and parts[-2] not in _SAFE_SCHEMAS):
        return False  # a function in a user schema: unknown
    if len(parts) > 1 and parts[-2] == "information_schema":
        return True
    return _pure_function(parts[-1])


# ---------------------------------------------------------------------- classify


def classify(sql: str) -> Kind:
    """The kind of a statement text (one or several statements)."""
    kind = _kind_get(sql)
    if kind is None:
        kind = _classify_text(sql)
        _kinds.put(sql, kind)
    return kind


def _classify_text(sql: str) -> Kind:
    body = sql.rstrip(_TRAILING)
    if ";" not in body:
        return _classify_statement(body)
    kind = READ
    for statement in _statements(body):
        found = _classify_statement(statement)
        if _RANK[found] > _RANK[kind]:
            kind = found
    return kind


def _statements(sql: str) -> Iterator[str]:
    """Split a multi-statement text: the parser's split, else the scanner's."""
    try:
        yield from split(sql)
        return
    except _PARSE_ERRORS:
        pass
    try:
        tokens = scan(sql)
    except _PARSE_ERRORS:
        yield sql  # not even lexable: judged by its leading keyword
        return
    start = 0
    for token in tokens:
        if token.name == "ASCII_59":
            yield sql[start : token.start]
            start = token.end + 1
    yield sql[start:]


def _classify_statement(sql: str) -> Kind:
    """One statement, without its trailing ';'."""
    words = sql[:_HEAD_WINDOW].split(None, 1)
    head = words[0].lower() if words and (len(words) == 2 or len(sql) <= _HEAD_WINDOW) else ""
    if head not in _KNOWN_HEADS:  # comments, '(', a glued token, long indentation...
        head = _next_word(sql)[0]
    kind = _HEAD_KINDS.get(head)
    if kind is not None:
        if head == "prepare" and _next_word(sql, _next_word(sql)[1])[0] == "transaction":
            return TXN
        return kind
    if head == "select":
        if "(" not in sql:
            low = sql.lower()
            if ("for" not in low and "into" not in low) or _FOR_INTO.search(low) is None:
                return READ  # the hot path: no call, no lock, no INTO
        return _shaped_kind(sql, head)
    if head in _SHAPE_HEADS:
        if head == "explain" and _ANALYZE.search(sql) is None:
            return READ  # a plan is never executed without ANALYZE
        return _shaped_kind(sql, head)
    if head == "":
        return READ  # empty query: blanks, comments, ';'
    return WRITE  # unknown: conservative


def _shaped_kind(sql: str, head: str) -> Kind:
    try:
        tree = orjson.loads(parse_sql_json(sql))
    except _PARSE_ERRORS:
        return _unparsed_kind(sql, head)
    kind = READ
    for raw in tree.get("stmts", ()):
        found = _node_kind(raw.get("stmt", {}))
        if _RANK[found] > _RANK[kind]:
            kind = found
    return kind


def _node_kind(node: dict[str, Any]) -> Kind:
    """Kind of one parsed statement node (``{"SelectStmt": {...}}``)."""
    for name, body in node.items():
        if name == "SelectStmt":
            return WRITE if _has_effect(body) else READ
        if name in _DML_NODES:
            return WRITE
        if name == "ExplainStmt":
            return _node_kind(body.get("query", {})) if _explain_runs(body) else READ
        if name == "CopyStmt":
            if body.get("is_from"):
                return WRITE
            query = body.get("query")
            return _node_kind(query) if query else READ
        if name == "DeclareCursorStmt":
            return _node_kind(body.get("query", {}))
        if name == "CreateTableAsStmt":
            return DDL
    return WRITE  # any other statement reached through EXPLAIN ANALYZE (EXECUTE...)


def _explain_runs(body: dict[str, Any]) -> bool:
    """EXPLAIN with ANALYZE (not ``ANALYZE false``) executes its statement."""
    for option in body.get("options", ()):
        elem = option.get("DefElem", {})
        if elem.get("defname") != "analyze":
            continue
        arg = elem.get("arg")
        if arg is None:
            return True
        if "Integer" in arg:
            return bool(arg["Integer"].get("ival", 0))
        if "Boolean" in arg:
            return bool(arg["Boolean"].get("boolval", False))
        value = str(arg.get("String", {}).get("sval", "on")).lower()
        return value not in ("false", "off", "no", "0")
    return False


_EFFECT_KEYS = _DML_NODES | {"lockingClause", "intoClause"}


def _has_effect(root: Any) -> bool:
    """A parsed query locks rows, creates a table, modifies data or calls an impure function."""
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            for key, value in node.items():
                if key in _EFFECT_KEYS and value:
                    return True
                if key == "FuncCall" and not _pure_call(value.get("funcname", ())):
                    return True
                if type(value) is dict or type(value) is list:
                    stack.append(value)
        elif type(node) is list:
            stack.extend(node)
    return False


# ------------------------------------------------------- text that does not parse

_LEXEME: Final = re.compile(
    r"""(?P<string>'(?:[^']|'')*'?)
      | (?P<dollar>\$\$.*?(?:\$\$|\Z) | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)\$.*?(?:\$(?P=tag)\$|\Z))
      | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
      | (?P<ident>"(?:[^"]|"")*"?)
      | (?P<number>(?<![\w$])(?:0[xob][0-9a-f_]+|(?:[0-9][0-9_]*(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?))
    """,
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)


def _blank_literals(match: re.Match[str]) -> str:
    if match.group("ident") is not None:
        return match.group()
    return " " if match.group("comment") is not None else "?"


_CALL: Final = re.compile(r"([A-Za-z_][A-Za-z_0-9$]*)\s*\(")
_DML_WORD: Final = re.compile(r"\b(?:for|into|insert|update|delete|merge)\b")
_NOT_CALLS: Final = (
    RESERVED_KEYWORDS
    | COL_NAME_KEYWORDS
    | TYPE_FUNC_NAME_KEYWORDS
    | {"over", "filter", "within", "recursive", "materialized", "lateral"}
)
_TOP_TO: Final = re.compile(r"\bto\b")
_TOP_FROM: Final = re.compile(r"\bfrom\b")
_PARENS: Final = re.compile(r"\([^()]*\)")


def _unparsed_kind(sql: str, head: str) -> Kind:
    """Best guess for a statement libpg_query rejects (it will most likely fail upstream too)."""
    text = _LEXEME.sub(_blank_literals, sql).lower()
    if head == "explain":
        return WRITE  # EXPLAIN ANALYZE of something we cannot read: assume it writes
    if head == "declare":
        m = re.search(r"\bfor\b", text)
        return _classify_statement(text[m.end() :]) if m else READ
    if head == "copy":
        for _ in range(32):  # drop nested parentheses: the query of COPY (query) TO
            text, count = _PARENS.subn(" ", text)
            if not count:
                break
        return READ if _TOP_TO.search(text) and not _TOP_FROM.search(text) else WRITE
    if _DML_WORD.search(text):
        return WRITE
    for name in _CALL.findall(text):
        if name not in _NOT_CALLS and not _pure_function(name):
            return WRITE
    return READ


# --------------------------------------------------------------- read-only begin

_BEGIN_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_ACCESS_MODE = re.compile(r"\bread\s+(only|write)\b", re.IGNORECASE)


def is_read_only_begin(sql: str) -> bool:
    """The (first) statement opens or sets a READ ONLY transaction.

    BEGIN [WORK|TRANSACTION] ..., START TRANSACTION ... and SET TRANSACTION ...
    with READ ONLY among their modes; the last access mode named wins.
    """
    head, end = _next_word(sql)
    if head in ("start", "set"):
        word, end = _next_word(sql, end)
        if word != "transaction":
            return False
    elif head != "begin":
        return False
    semi = sql.find(";", end)
    modes = _BEGIN_COMMENT.sub(" ", sql[end : semi if semi >= 0 else len(sql)])
    found = _ACCESS_MODE.findall(modes)
    return bool(found) and found[-1].lower() == "only"


# ------------------------------------------------------------------- fingerprint

_FINGERPRINT_MAX: Final = 500
_CONST_TOKENS = frozenset(("SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"))
_COMMENT_TOKENS = frozenset(("C_COMMENT", "SQL_COMMENT"))


def fingerprint(sql: str) -> str:
    """A literal-free form of ``sql`` for logs and metrics (constants become ``$n``)."""
    found = _fingerprints.data.get(sql)
    if found is None:
        found = _fingerprint_text(sql)
        _fingerprints.put(sql, found)
    return found


def read_shape(sql: str) -> tuple[str, bool]:
    """A read's ``fingerprint`` and whether it sorts its rows (ORDER BY outside
    literals and comments: its rows then compare in order).

    Reads sent with literals (the simple protocol) differ in every call: those of
    the same shape once the literals are blanked (a regex, cheap) share one entry
    and one parse.  Two shapes that only the parser tells apart (one of them
    unparseable) may share a fingerprint."""
    found = _shapes.data.get(sql)
    if found is None:
        blanked = _LEXEME.sub(_blank_literals, sql)
        shape = "\0" + blanked  # never a statement's own text
        found = _shapes.data.get(shape)
        if found is None:
            found = (_fingerprint_text(sql), bool(_ORDER_BY.search(blanked)))
            _shapes.put(shape, found)
        if blanked == sql:  # no literals (a prepared statement): found by its text next time
            _shapes.put(sql, found)
    return found


def _fingerprint_text(sql: str) -> str:
    try:
        text = _scrub(normalize(sql))
    except _PARSE_ERRORS:
        text = _LEXEME.sub(_blank_literals, sql)
    return " ".join(text.split()).rstrip("; ")[:_FINGERPRINT_MAX]


def _scrub(normalized: str) -> str:
    """Replace the constants libpg_query's normalize leaves (typmods, utility
    statements such as COMMENT or COPY) and drop comments."""
    tokens = scan(normalized)
    params = [int(normalized[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"]
    n = max(params, default=0)
    out, pos = [], 0
    for token in tokens:
        if token.name in _CONST_TOKENS or token.name in _COMMENT_TOKENS:
            out.append(normalized[pos : token.start])
            if token.name in _CONST_TOKENS:
                n += 1
                out.append(f"${n}")
            else:
                out.append(" ")
            pos = token.end + 1
    out.append(normalized[pos:])
    return "".join(out)


# ----------------------------------------------------------------------- tables


def tables_of(sql: str) -> tuple[str, ...]:
    """Tables a write statement writes (INSERT/UPDATE/DELETE/MERGE targets, COPY
    FROM target, TRUNCATE list, SELECT INTO target), in text order; best effort."""
    found = _tables.data.get(sql)
    if found is None:
        found = _tables_in(sql)
        _tables.put(sql, found)
    return found


def _tables_in(sql: str) -> tuple[str, ...]:
    try:
        tree = orjson.loads(parse_sql_json(sql))
    except _PARSE_ERRORS:
        return ()
    targets: list[tuple[int, str]] = []
    stack: list[Any] = [tree.get("stmts", [])]
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
            continue
        if type(node) is not dict:
            continue
        for key, value in node.items():
            if key in _DML_NODES or (key == "CopyStmt" and value.get("is_from")):
                _add_target(targets, value.get("relation"))
            elif key == "TruncateStmt":
                for rel in value.get("relations", ()):
                    _add_target(targets, rel.get("RangeVar"))
            elif key == "intoClause":
                _add_target(targets, value.get("rel"))
            elif key == "ExplainStmt" and not _explain_runs(value):
                continue  # a plain EXPLAIN writes nothing
            if type(value) is dict or type(value) is list:
                stack.append(value)
    seen: dict[str, None] = {}
    for _, name in sorted(targets):
        seen.setdefault(name, None)
    return tuple(seen)


_ORDER_BY: Final = re.compile(r"\border\s+by\b", re.IGNORECASE)


def relations_of(sql: str) -> tuple[str, ...]:
    """Every table or view a statement names, by bare name (no schema), sorted; best
    effort (a statement pglast cannot parse names nothing)."""
    found = _relations.data.get(sql)
    if found is None:
        try:
            tree = orjson.loads(parse_sql_json(sql))
        except _PARSE_ERRORS:
            tree = {}
        names: set[str] = set()
        stack: list[Any] = [tree]
        while stack:
            node = stack.pop()
            if type(node) is list:
                stack.extend(node)
            elif type(node) is dict:
                rel = node.get("RangeVar")
                if type(rel) is dict and rel.get("relname"):
                    names.add(rel["relname"])
                stack.extend(v for v in node.values() if type(v) is dict or type(v) is list)
        found = tuple(sorted(names))
        _relations.put(sql, found)
    return found


def _add_target(targets: list[tuple[int, str]], rel: dict[str, Any] | None) -> None:
    if rel and rel.get("relname"):
        parts = [rel.get(k) for k in ("catalogname", "schemaname", "relname")]
        targets.append((rel.get("location", 0), ".".join(p for p in parts if p)))


_TAG_KINDS: Final[dict[bytes, Kind]] = {}
_TAG_FIRST_WORD: Final = {
    b"SELECT": Kind.READ,
    b"FETCH": Kind.READ,
    b"MOVE": Kind.READ,
    b"SHOW": Kind.READ,
    b"EXPLAIN": Kind.READ,
    b"CLOSE": Kind.READ,
    b"DECLARE": Kind.READ,
    b"INSERT": Kind.WRITE,
    b"UPDATE": Kind.WRITE,
    b"DELETE": Kind.WRITE,
    b"MERGE": Kind.WRITE,
    b"COPY": Kind.WRITE,
    b"TRUNCATE": Kind.WRITE,
    b"CALL": Kind.WRITE,
    b"DO": Kind.WRITE,
    b"LOCK": Kind.WRITE,
    b"NOTIFY": Kind.WRITE,
    b"REFRESH": Kind.WRITE,
    b"BEGIN": Kind.TXN,
    b"START": Kind.TXN,
    b"COMMIT": Kind.TXN,
    b"ROLLBACK": Kind.TXN,
    b"SAVEPOINT": Kind.TXN,
    b"RELEASE": Kind.TXN,
    b"SET": Kind.SESSION,
    b"RESET": Kind.SESSION,
    b"DISCARD": Kind.SESSION,
    b"PREPARE": Kind.SESSION,
    b"DEALLOCATE": Kind.SESSION,
    b"LISTEN": Kind.SESSION,
    b"UNLISTEN": Kind.SESSION,
    b"LOAD": Kind.SESSION,
}


def kind_of_tag(body: bytes) -> Kind:
    """The statement kind a CommandComplete tag reports (its first word).

    Used where the relay does not read the client's statements (nothing is
    mirrored): the store's answer names what ran.  ``SELECT`` counts as a read
    even when the query had side effects; the tag cannot tell.
    """
    kind = _TAG_KINDS.get(body)
    if kind is None:
        first = body.split(b" ", 1)[0].rstrip(b"\0")
        kind = _TAG_FIRST_WORD.get(first, Kind.DDL)
        if len(_TAG_KINDS) < 10_000:
            _TAG_KINDS[body] = kind
    return kind
