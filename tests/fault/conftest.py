"""Fault-test fixtures: a throwaway PostgreSQL cluster that tests may stop and restart.

``throwaway_pg`` runs ``initdb`` into the test's tmp dir (as the ``postgres`` user
when the tests run as root: initdb refuses root), starts the cluster on a free
loopback port with fsync off and trust auth, and stops it afterwards by its own
data directory (``pg_ctl -D ... stop``), never by name.  ``stop()`` is an
immediate shutdown (the store "crashes"); ``start()`` brings it back on the same
port ("the store comes back").

``cross_pair`` is a ``PgPair`` whose old database lives on the main server and
whose new database lives in the throwaway cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_USER, PgPair, admin_conn, free_port


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.skip("initdb not found")
    return Path(initdb).parent


@dataclass
class ThrowawayCluster:
    datadir: Path
    sockdir: Path
    port: int
    bindir: Path
    run_as: str | None

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _run(self, *args: str, timeout: float = 60) -> None:
        res = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {res.stdout}\n{res.stderr}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        opts = (
            # fsync=off only: an immediate stop is not an OS crash, so every commit the
            # server acknowledged survives it (synchronous_commit=off would not).
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        )
        log = self.datadir.parent / "postgres.log"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        res = subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "status"), capture_output=True
        )
        return res.returncode == 0

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=PG_HOST, port=self.port, user=PG_USER, dbname="postgres", autocommit=True
        )

    def create_db(self, name: str) -> None:
        with self.admin() as c:
            c.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayCluster]:
    # Not under tmp_path: pytest makes that 0700 (the postgres user could not reach
    # it) and deep (unix socket paths are limited to ~100 bytes).
    base = Path(tempfile.mkdtemp(prefix="sp-fault-pg-"))
    sockdir = base / "sock"
    sockdir.mkdir()
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        shutil.chown(base, run_as)
        shutil.chown(sockdir, run_as)
    cluster = ThrowawayCluster(base / "data", sockdir, free_port(), _pg_bindir(), run_as)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class CrossPair(PgPair):
    """Old database on the main server, new database in the throwaway cluster."""

    def __init__(self, old: str, new: str, new_port: int) -> None:
        super().__init__(old, new)
        self.new_port = new_port

    def connect(self, which: str, **kw: Any) -> psycopg.Connection[Any]:
        if which == "old":
            return super().connect(which, **kw)
        return psycopg.connect(
            host=PG_HOST, port=self.new_port, user=PG_USER, dbname=self.new, **kw
        )


@pytest.fixture
def cross_pair(throwaway_pg: ThrowawayCluster) -> Iterator[CrossPair]:
    tag = uuid.uuid4().hex[:10]
    pair = CrossPair(f"sp_old_{tag}", f"sp_new_{tag}", throwaway_pg.port)
    with admin_conn() as c:
        c.execute(f"CREATE DATABASE {pair.old}")  # type: ignore[arg-type]
    throwaway_pg.create_db(pair.new)
    yield pair
    with admin_conn() as c:
        c.execute(f"DROP DATABASE IF EXISTS {pair.old} WITH (FORCE)")  # type: ignore[arg-type]
