"""Fixtures for the end-to-end tests: real clients through a real proxy.

Every test here drives a workload through ``shadowproxy serve`` with a real client
(psql, pgbench, asyncpg, psycopg), waits for the mirror to drain, then compares the
two stores directly.  ``pg_cluster`` starts a throwaway PostgreSQL cluster with
password authentication (the shared server on :5432 trusts loopback, which would
let a broken password relay pass unnoticed).
"""

from __future__ import annotations

import glob
import os
import pwd
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

from tests.conftest import PG_HOST, PG_USER, ProxyProcess, admin_conn, free_port, pg_dsn


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (pgbench runs)")


# ----------------------------------------------------------------------- helpers


def assert_no_divergences(proxy: ProxyProcess) -> None:
    events = proxy.divergences()
    assert events == [], (
        f"unexpected divergences: {events}\n--- proxy log ---\n{proxy.log()[-3000:]}"
    )


def run_psql(
    port: int,
    db: str,
    script: str,
    *,
    stop_on_error: bool = True,
    user: str = PG_USER,
    extra: tuple[str, ...] = (),
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with psql (stdin), against any host port (proxy or server)."""
    cmd = [
        "psql",
        "-X",
        "-q",
        "-v",
        f"ON_ERROR_STOP={1 if stop_on_error else 0}",
        "-h",
        PG_HOST,
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        db,
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        cmd, input=script, capture_output=True, text=True, env=env, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, f"psql failed ({proc.returncode}): {proc.stderr}"
    return proc


# ---------------------------------------------------------- a password cluster


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("initdb not found under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    """initdb and postgres refuse to run as root: run them as ``owner`` then."""
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


@dataclass
class PgCluster:
    """A throwaway cluster on a loopback port, with a superuser that has a password."""

    port: int
    datadir: Path
    sockdir: Path
    superuser: str
    superpass: str

    def connect(self, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=PG_HOST,
            port=self.port,
            user=self.superuser,
            password=self.superpass,
            dbname=dbname,
            **kw,
        )

    def dsn(self, db: str, user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        password = self.superpass if password is None else password
        return f"postgresql://{user}:{password}@{PG_HOST}:{self.port}/{db}"


HBA = """\
# TYPE  DATABASE  USER            ADDRESS        METHOD
local   all       all                            trust
host    all       sp_md5          127.0.0.1/32   md5
host    all       sp_password     127.0.0.1/32   password
host    all       all             127.0.0.1/32   scram-sha-256
"""


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """initdb + pg_ctl start on a free loopback port; stopped (-m immediate) at the end."""
    bindir = _pg_bindir()
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a cluster")
        owner = "postgres"
    base = Path(tempfile.mkdtemp(prefix="sp-cluster-"))
    datadir, sockdir, pwfile = base / "data", base / "sock", base / "pw"
    sockdir.mkdir()
    superpass = "super-secret-pw"
    pwfile.write_text(superpass + "\n")
    if owner:
        for path in (base, sockdir, pwfile):
            shutil.chown(path, owner)
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(datadir)]
    started = False
    try:
        initdb = [str(bindir / "initdb"), "-D", str(datadir), "-U", "sp_super"]
        initdb += [f"--pwfile={pwfile}", "--auth=scram-sha-256", "--no-sync", "-E", "UTF8"]
        _run(_as_owner(initdb, owner), base)
        (datadir / "pg_hba.conf").write_text(HBA)
        port = free_port()
        opts = f"-p {port} -k {sockdir} -c listen_addresses={PG_HOST} -c fsync=off"
        logfile = base / "server.log"
        started = True
        _run(_as_owner([*pg_ctl, "-l", str(logfile), "-o", opts, "-w", "start"], owner), base)
        cluster = PgCluster(port, datadir, sockdir, "sp_super", superpass)
        with cluster.connect(connect_timeout=5):
            pass
        yield cluster
    finally:
        if started:
            subprocess.run(
                _as_owner([*pg_ctl, "stop", "-m", "immediate"], owner),
                capture_output=True,
                cwd=base,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class ControlDb:
    name: str
    role: str  # the proxies' own login, so a test can lock them out

    @property
    def cli_dsn(self) -> str:  # the operator (superuser)
        return pg_dsn(self.name)

    @property
    def proxy_dsn(self) -> str:
        return pg_dsn(self.name, user=self.role)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cli_dsn, autocommit=True) as c:
            cur = c.execute(sql, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []


@pytest.fixture
def control_db() -> Iterator[ControlDb]:
    tag = uuid.uuid4().hex[:10]
    db = ControlDb(f"sp_ctl_{tag}", f"sp_ctl_role_{tag}")
    with admin_conn() as c:
        c.execute(f"CREATE ROLE {db.role} LOGIN")  # type: ignore[arg-type]
        c.execute(f"CREATE DATABASE {db.name} OWNER {db.role}")  # type: ignore[arg-type]
    yield db
    with admin_conn() as c:
        c.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")  # type: ignore[arg-type]
        c.execute(f"DROP ROLE IF EXISTS {db.role}")  # type: ignore[arg-type]
