"""Fixtures for the comparator tests: throwaway databases on the real servers.

``make_db("postgresql")`` / ``make_db("mysql")`` create a database with a unique name
(PostgreSQL at 127.0.0.1:5432, MariaDB at 127.0.0.1:3306) and return its URL; every
database is dropped after the test.  ``compare_cli`` runs ``shadowproxy compare`` as a
user would (a subprocess) and returns its exit code and parsed JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, SHADOWPROXY

MY_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("TEST_MYSQL_USER", "root")


def pg_url(db: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def my_url(db: str) -> str:
    return f"mariadb://{MY_USER}@{MY_HOST}:{MY_PORT}/{db}"


def _pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    )


def _my_conn(db: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=MY_HOST,
        port=MY_PORT,
        user=MY_USER,
        database=db,
        autocommit=True,
        charset="utf8mb4",
        init_command="SET time_zone = '+00:00'",
    )


@dataclass(frozen=True)
class Db:
    engine: str  # postgresql | mysql
    name: str

    @property
    def url(self) -> str:
        return pg_url(self.name) if self.engine == "postgresql" else my_url(self.name)

    @property
    def schema(self) -> str:
        """Where tables live: ``public`` on PostgreSQL, the database itself on MariaDB."""
        return "public" if self.engine == "postgresql" else self.name

    def run(self, *statements: str) -> None:
        if self.engine == "postgresql":
            with psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.name, autocommit=True
            ) as c:
                for s in statements:
                    c.execute(s)  # type: ignore[arg-type]
            return
        conn = _my_conn(self.name)
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
        finally:
            conn.close()

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row of parameters (``%s`` placeholders on both engines)."""
        if self.engine == "postgresql":
            with (
                psycopg.connect(
                    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.name, autocommit=True
                ) as c,
                c.cursor() as cur,
            ):
                cur.executemany(sql, rows)  # type: ignore[arg-type]
            return
        conn = _my_conn(self.name)
        try:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.engine == "postgresql":
            with psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=self.name, autocommit=True
            ) as c:
                return list(c.execute(sql).fetchall())  # type: ignore[arg-type]
        conn = _my_conn(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


@pytest.fixture
def make_db() -> Iterator[Callable[[str], Db]]:
    made: list[Db] = []

    def make(engine: str) -> Db:
        db = Db(engine, f"spc_{uuid.uuid4().hex[:12]}")
        if engine == "postgresql":
            with _pg_admin() as c:
                c.execute(f"CREATE DATABASE {db.name}")  # type: ignore[arg-type]
        else:
            conn = _my_conn()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE {db.name} CHARACTER SET utf8mb4")
            finally:
                conn.close()
        made.append(db)
        return db

    yield make
    for db in made:
        if db.engine == "postgresql":
            with _pg_admin() as c:
                c.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")  # type: ignore[arg-type]
        else:
            conn = _my_conn()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS {db.name}")
            finally:
                conn.close()


@dataclass
class CliResult:
    code: int
    report: dict[str, Any]
    stderr: str

    def table(self, name: str) -> dict[str, Any]:
        return next(t for t in self.report["tables"] if t["table"] == name)

    def keys(self, name: str, kind: str) -> set[tuple[Any, ...]]:
        field = "row" if self.table(name)["keyless"] else "key"
        return {tuple(s[field]) for s in self.table(name)["samples"][kind]}


def compare_cli(
    old: Db, new: Db, *args: str, cwd: Path, timeout: float = 300, check: bool = True
) -> CliResult:
    """``shadowproxy compare --json`` between two databases (samples: everything).

    Runs in ``cwd`` (the test's tmp_path), where the divergence log lands by default.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    cmd = [SHADOWPROXY, "compare", "--old", old.url, "--new", new.url, "--json"]
    if "--divergence-log" not in args:
        cmd += ["--divergence-log", str(cwd / "divergence.jsonl")]
    if "--samples" not in args:
        cmd += ["--samples", "100000"]
    if "--settle-seconds" not in args:
        cmd += ["--settle-seconds", "0.2"]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
    if not check:
        return CliResult(proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr)
    assert proc.returncode in (0, 1), f"compare failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return CliResult(proc.returncode, json.loads(proc.stdout), proc.stderr)
