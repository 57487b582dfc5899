"""The demo's PostgreSQL: the local server or a throwaway cluster, the two
databases, and the comparison of their rows computed by the server."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from proxy.demo._common import PG_USER, PROG, SCHEMA, SEED, TABLES, DemoError, _tail, free_port, say


@dataclass
class Server:
    host: str
    port: int
    throwaway: bool = False
    bindir: Path | None = None
    datadir: Path | None = None
    owner: dict[str, Any] = field(default_factory=dict)  # subprocess user/group kwargs


def _find_bindir() -> Path | None:
    """A directory with initdb, pg_ctl and postgres: PATH first, then the newest Debian one."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(p: str) -> int:
        v = Path(p).parent.parent.name
        return int(v) if v.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        candidates.append(Path(found).parent)
    for d in candidates:
        if all(os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _unprivileged_owner() -> dict[str, Any]:
    """subprocess kwargs that drop root for initdb/pg_ctl (they refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise DemoError("running as root and no unprivileged user (postgres, nobody) to run initdb")


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def start_throwaway_cluster(workdir: Path, stack: contextlib.ExitStack) -> Server:
    bindir = _find_bindir()
    if bindir is None:
        raise DemoError(
            "no PostgreSQL answers and no initdb was found on PATH or under "
            "/usr/lib/postgresql/*/bin: start a server or pass --pg HOST:PORT"
        )
    owner = _unprivileged_owner()
    base = workdir / "pg"
    sockdir = base / "sock"
    datadir = base / "data"
    sockdir.mkdir(parents=True)
    if owner:
        os.chmod(workdir, 0o711)  # the cluster's owner must traverse into base/
        for d in (base, sockdir):
            os.chown(d, owner["user"], owner["group"])
    port = free_port()
    say(f"  initdb: {bindir / 'initdb'} -> {datadir}")
    log = base / "pg_ctl.log"
    run = _owned_runner(base, log, owner)
    run(
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        "initdb",
    )
    opts = (
        f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    )
    server = Server("127.0.0.1", port, True, bindir, datadir, owner)
    run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(base / "server.log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        ],
        "pg_ctl start",
    )
    stack.callback(stop_throwaway_cluster, server, run)
    return server


def _owned_runner(cwd: Path, log: Path, owner: dict[str, Any]) -> Any:
    def run(cmd: list[str], what: str) -> None:
        # Output goes to a file, never a pipe: the postmaster pg_ctl starts could
        # inherit a pipe and keep it open long after pg_ctl returned.
        with log.open("ab") as out:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=_pg_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **owner,
            )
        if proc.returncode != 0:
            raise DemoError(f"{what} failed (exit {proc.returncode}):\n{_tail(log)}")

    return run


def stop_throwaway_cluster(server: Server, run: Any) -> None:
    assert server.bindir is not None and server.datadir is not None
    say(f"stopping the throwaway PostgreSQL cluster on port {server.port}")
    try:
        run(
            [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "stop"],
            "pg_ctl stop",
        )
    except (DemoError, subprocess.TimeoutExpired) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)


async def _connect(host: str, port: int, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=host, port=port, user=PG_USER, database=database, timeout=10)


async def prepare_databases(server: Server, old_db: str, new_db: str) -> None:
    admin = await _connect(server.host, server.port, "postgres")
    try:
        for db in (old_db, new_db):
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in (old_db, new_db):
        conn = await _connect(server.host, server.port, db)
        try:
            async with conn.transaction():
                await conn.execute(SCHEMA)
                await conn.execute(SEED)
        finally:
            await conn.close()


@dataclass
class TableVerdict:
    table: str
    old: tuple[int, str]
    new: tuple[int, str]

    @property
    def identical(self) -> bool:
        return self.old == self.new


async def compare_stores(server: Server, old_db: str, new_db: str) -> list[TableVerdict]:
    async def digests(db: str) -> dict[str, tuple[int, str]]:
        conn = await _connect(server.host, server.port, db)
        try:
            out = {}
            for table in TABLES:
                row = await conn.fetchrow(
                    "SELECT count(*) AS n, "
                    "coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') AS digest "
                    f"FROM {table} t"
                )
                out[table] = (int(row["n"]), str(row["digest"]))
            return out
        finally:
            await conn.close()

    old, new = await asyncio.gather(digests(old_db), digests(new_db))
    return [TableVerdict(t, old[t], new[t]) for t in TABLES]


# ---------------------------------------------------------------------- the proxy
