"""Rows as unambiguous text, and the per-row hashes both engines sum into checksums.

Each column's canonical text (``comparator.normalize``) is framed so that no choice of
values can make two different rows encode alike; the row text is hashed (SHA-256 of its
UTF-8 bytes, or the native 64-bit hashes when both stores are PostgreSQL with identical
types) and a checksum is ``count(*)`` and the exact integer sum of the row hashes.
"""

from __future__ import annotations

import hashlib

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


# SHA-256 rather than md5: measured on MariaDB 10.11, SHA2(x, 256) costs ~0.1 µs a row
# and MD5(x) ~0.9 µs, the largest part of a checksum scan; PostgreSQL 15's sha256 is
# no slower than its md5 either.
def row_hash_sql(engine: Engine, row_sql: str) -> str:
    """16 hex digits (the first 64 bits) of SHA-256 of the row text's UTF-8 bytes."""
    if engine == "postgresql":
        # convert_to: hash UTF-8 bytes whatever the database encoding (as MariaDB does
        # with utf8mb4 text); only 8 of the 32 digest bytes are hex-encoded.
        return f"encode(substr(sha256(convert_to({row_sql}, 'UTF8')), 1, 8), 'hex')"
    return f"LEFT(SHA2({row_sql}, 256), 16)"


def row_hash(text: str) -> str:
    """Python twin of ``row_hash_sql`` (for tests and tooling)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_sum_sql(engine: Engine, hash_expr: str) -> str:
    """What a row hash adds to a checksum: its first 60 bits, so sums stay exact integers
    on both engines (a signed 64-bit value would differ from MariaDB's unsigned one)."""
    if engine == "postgresql":
        return f"('x' || {hash_expr})::bit(60)::bigint"
    return f"CAST(CONV(LEFT({hash_expr}, 15), 16, 10) AS UNSIGNED)"


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
