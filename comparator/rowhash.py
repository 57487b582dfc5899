"""Rows as unambiguous text, and the per-row hashes both engines sum into checksums.

Each column's canonical text (``comparator.normalize``) is framed so that no choice of
values can make two different rows encode alike; the row text is hashed (md5, or the
native 64-bit hashes when both stores are PostgreSQL with identical types) and a
checksum is ``count(*)`` and the exact integer sum of the row hashes.
"""

from __future__ import annotations

from comparator.dsn import Engine


def row_text_sql(engine: Engine, exprs: list[str], safe: list[bool]) -> str:
    """The unambiguous text of a row, built in one flat concatenation.

    A safe column renders as ``text|`` or ``N|``; any other column as ``len:text|`` or
    ``N:|``.  Reading left to right with the column list known, every column boundary
    is determined, so no choice of values can make two different rows collide.
    """
    parts: list[str] = []
    for e, is_safe in zip(exprs, safe, strict=True):
        if engine == "postgresql":
            if is_safe:
                parts += [f"coalesce({e}, 'N')", "'|'"]
            else:
                parts += [
                    f"coalesce(octet_length({e})::text, 'N')",
                    "':'",
                    f"coalesce({e}, '')",
                    "'|'",
                ]
        elif is_safe:
            parts += [f"IFNULL({e}, 'N')", "'|'"]
        else:
            parts += [f"IFNULL(LENGTH({e}), 'N')", "':'", f"IFNULL({e}, '')", "'|'"]
    if engine == "postgresql":
        return " || ".join(parts) if parts else "''"
    return f"CONCAT({', '.join(parts)})" if parts else "''"


def row_text(values: list[str | None], safe: list[bool]) -> str:
    """Python twin of ``row_text_sql`` over canonical texts (for tests and tooling)."""
    out = []
    for v, is_safe in zip(values, safe, strict=True):
        if is_safe:
            out.append("N|" if v is None else f"{v}|")
        else:
            out.append("N:|" if v is None else f"{len(v.encode())}:{v}|")
    return "".join(out)


def md5_hash_sql(engine: Engine, row_sql: str) -> str:
    """15 hex digits (60 bits) of md5 per row: an exact integer sum on both engines."""
    return f"left(md5({row_sql}), 15)" if engine == "postgresql" else f"LEFT(MD5({row_sql}), 15)"


def md5_sum_sql(engine: Engine, hash_expr: str) -> str:
    if engine == "postgresql":
        return f"('x' || {hash_expr})::bit(60)::bigint"
    return f"CAST(CONV({hash_expr}, 16, 10) AS UNSIGNED)"


_PG_INT_HASH = {"int2", "int4", "int8"}


def pg64_hash_sql(columns: list[tuple[str, str]]) -> str:
    """PostgreSQL on both sides, same types: xor of per-column 64-bit hashes.

    ``hashtextextended``/``hashint8extended`` cost a fraction of md5 and of a record's
    text output.  Each column is seeded by its position (so swapped values differ) and
    NULL hashes to a per-position constant.
    """
    parts = []
    for i, (quoted, typname) in enumerate(columns):
        seed = i + 1
        if typname in _PG_INT_HASH:
            h = f"hashint8extended({quoted}::int8, {seed})"
        elif typname == "text":
            h = f"hashtextextended({quoted}, {seed})"
        else:
            h = f"hashtextextended({quoted}::text, {seed})"
        null = (0x2545F4914F6CDD1D * seed) % (1 << 63)
        parts.append(f"coalesce({h}, {null})")
    return " # ".join(parts) if parts else "0"
