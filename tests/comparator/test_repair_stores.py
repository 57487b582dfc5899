"""Throwaway databases on the real servers for the schema parity and repair tests.

``stores`` gives each test empty databases with unique names on PostgreSQL
(127.0.0.1:5432) and MariaDB (127.0.0.1:3306), and drops them afterwards (the
PostgreSQL ones are emptied and reused within the session, then dropped).  Setup and checks go through
psycopg and PyMySQL, never through the code under test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pymysql
import pytest

from comparator.dsn import StoreDsn

PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
MY_PORT = int(os.environ.get("TEST_MY_PORT", "3306"))


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres", autocommit=True
    )


def my_conn(database: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=MY_PORT,
        user="root",
        password="",
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


class PgPool:
    """PostgreSQL databases reused across the tests of a session.

    Creating and dropping a database costs the server a checkpoint (seconds on a
    busy machine); emptying its ``public`` schema costs milliseconds.  Each test
    still gets databases of its own, empty, under unique names."""

    def __init__(self) -> None:
        self.free: list[str] = []
        self.all: list[str] = []

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"sp_cmp_{uuid.uuid4().hex[:12]}"
        with pg_admin() as c:
            c.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        self.all.append(name)
        return name

    def give_back(self, name: str) -> None:
        with psycopg.connect(
            host="127.0.0.1", port=PG_PORT, user="postgres", dbname=name, autocommit=True
        ) as c:
            c.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        self.free.append(name)

    def drop_all(self) -> None:
        with pg_admin() as c:
            for name in self.all:
                c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


class Stores:
    def __init__(self, pg_pool: PgPool) -> None:
        self.pg_pool = pg_pool
        self.created: list[StoreDsn] = []

    def new(self, engine: str) -> StoreDsn:
        if engine == "postgresql":
            name = self.pg_pool.take()
            dsn = StoreDsn("postgresql", "127.0.0.1", PG_PORT, "postgres", None, name)
        else:
            name = f"sp_cmp_{uuid.uuid4().hex[:12]}"
            with my_conn() as c, c.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            dsn = StoreDsn("mysql", "127.0.0.1", MY_PORT, "root", None, name)
        self.created.append(dsn)
        return dsn

    def drop_all(self) -> None:
        for dsn in self.created:
            if dsn.engine == "postgresql":
                self.pg_pool.give_back(dsn.database)
            else:
                with my_conn() as c, c.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS {dsn.database}")


def run(dsn: StoreDsn, statements: Sequence[str], params: Sequence[Any] | None = None) -> None:
    """Run setup statements directly on one store (params apply to each statement)."""
    if dsn.engine == "postgresql":
        with psycopg.connect(
            host=dsn.host, port=dsn.port, user=dsn.user, dbname=dsn.database, autocommit=True
        ) as c:
            for sql in statements:
                c.execute(sql, params)  # type: ignore[arg-type]
    else:
        with my_conn(dsn.database) as c, c.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            for sql in statements:
                cur.execute(sql, params)


def run_many(dsn: StoreDsn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement for many parameter sets, on one connection."""
    if dsn.engine == "postgresql":
        with (
            psycopg.connect(
                host=dsn.host, port=dsn.port, user=dsn.user, dbname=dsn.database, autocommit=True
            ) as c,
            c.cursor() as cur,
        ):
            cur.executemany(sql, rows)  # type: ignore[arg-type]
    else:
        with my_conn(dsn.database) as c, c.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.executemany(sql, rows)


def query(dsn: StoreDsn, sql: str) -> list[tuple[Any, ...]]:
    if dsn.engine == "postgresql":
        with psycopg.connect(host=dsn.host, port=dsn.port, user=dsn.user, dbname=dsn.database) as c:
            return [tuple(r) for r in c.execute(sql).fetchall()]  # type: ignore[arg-type]
    with my_conn(dsn.database) as c, c.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


@pytest.fixture(scope="session")
def _pg_pool() -> Iterator[PgPool]:
    pool = PgPool()
    yield pool
    pool.drop_all()


@pytest.fixture(name="stores")
def stores_fixture(_pg_pool: PgPool) -> Iterator[Stores]:
    s = Stores(_pg_pool)
    yield s
    s.drop_all()
