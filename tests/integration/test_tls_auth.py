"""Authentication relayed through the proxy, and TLS between client and proxy.

(a) The client's own password exchange (md5, SCRAM-SHA-256, cleartext) is relayed
    untouched to a throwaway cluster that really checks passwords; a wrong
    password fails with the server's own error (SQLSTATE 28P01) and leaves other
    sessions alone.  The mirror authenticates to the new store with the
    credentials of SHADOW_NEW_DSN.
(b) The proxy terminates TLS when it has a certificate; without one it answers
    the SSLRequest with 'N', so sslmode=prefer falls back to plain and
    sslmode=require fails.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import PG_HOST, PgPair, ProxyProcess, pg_dsn
from tests.integration.conftest import PgCluster, assert_no_divergences

pytestmark = pytest.mark.integration

PASSWORDS = {"sp_md5": "md5 pass ✓", "sp_scram": "scram-pass-42", "sp_password": "clear:text@pw"}
METHODS = {"sp_md5": "md5", "sp_scram": "scram-sha-256", "sp_password": "password"}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def cluster_roles(pg_cluster: PgCluster) -> PgCluster:
    """The three login roles, each stored the way its pg_hba method needs."""
    with pg_cluster.connect(autocommit=True) as c:
        for role, pw in PASSWORDS.items():
            c.execute(f"DROP ROLE IF EXISTS {role}")
            encryption = "md5" if role == "sp_md5" else "scram-sha-256"
            c.execute(f"SET password_encryption = '{encryption}'")
            c.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'")
        stored = dict(
            c.execute(
                "SELECT rolname, left(rolpassword, 6) FROM pg_authid WHERE rolname LIKE 'sp\\_%'"
            ).fetchall()
        )
    assert stored["sp_md5"].startswith("md5")
    assert stored["sp_scram"].startswith("SCRAM-")
    return pg_cluster


@dataclass
class ClusterPair:
    cluster: PgCluster
    old: str
    new: str

    def connect(self, which: str) -> psycopg.Connection[Any]:
        return self.cluster.connect(self.old if which == "old" else self.new)

    def rows(self, which: str, sql: str) -> list[tuple[Any, ...]]:
        with self.connect(which) as c:
            return c.execute(sql).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def cluster_pair(cluster_roles: PgCluster) -> Iterator[ClusterPair]:
    tag = uuid.uuid4().hex[:8]
    pair = ClusterPair(cluster_roles, f"auth_old_{tag}", f"auth_new_{tag}")
    with cluster_roles.connect(autocommit=True) as c:
        for db in (pair.old, pair.new):
            c.execute(f"CREATE DATABASE {db}")
    for which in ("old", "new"):
        with pair.connect(which) as c:
            c.execute("CREATE TABLE notes (id int PRIMARY KEY, who text NOT NULL, body text)")
            c.execute("GRANT ALL ON notes TO " + ", ".join(PASSWORDS))
    yield pair
    with cluster_roles.connect(autocommit=True) as c:
        for db in (pair.old, pair.new):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days", "1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def proxy_conninfo(proxy: ProxyProcess, db: str, user: str, password: str, **kw: Any) -> str:
    parts = {"host": PG_HOST, "port": proxy.port, "dbname": db, "user": user, "password": password}
    parts.update(kw)
    return psycopg.conninfo.make_conninfo(**parts)  # type: ignore[arg-type]


# ------------------------------------------------------------------ (a) auth


@pytest.mark.parametrize("mirror_user", ["sp_super", "sp_md5", "sp_password"])
def test_password_methods_are_relayed(
    cluster_pair: ClusterPair, proxy_factory: Any, mirror_user: str
) -> None:
    """Each client method works with the right password; the mirror logs in as
    SHADOW_NEW_DSN's user (SCRAM, md5 or cleartext by the cluster's pg_hba)."""
    cl = cluster_pair.cluster
    mirror_pw = cl.superpass if mirror_user == "sp_super" else PASSWORDS[mirror_user]
    proxy = proxy_factory(
        cl.dsn(cluster_pair.old), cl.dsn(cluster_pair.new, mirror_user, mirror_pw)
    )
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        with psycopg.connect(
            proxy_conninfo(proxy, cluster_pair.old, user, pw, sslmode="disable")
        ) as conn:
            who = conn.execute("SELECT current_user, session_user").fetchone()
            assert who == (user, user)
            # current_user would differ on the mirror (it logs in as its own user).
            conn.execute("INSERT INTO notes VALUES (%s, %s, %s)", (i, user, METHODS[user]))
            conn.execute("UPDATE notes SET body = body || ' ok' WHERE id = %s", (i,))
            conn.commit()
    proxy.wait_mirror_idle()
    expected = [
        (0, "sp_md5", "md5 ok"),
        (1, "sp_scram", "scram-sha-256 ok"),
        (2, "sp_password", "password ok"),
    ]
    order = "SELECT id, who, body FROM notes ORDER BY id"
    assert cluster_pair.rows("old", order) == expected
    assert cluster_pair.rows("new", order) == expected
    assert_no_divergences(proxy)


@pytest.mark.parametrize("user", list(PASSWORDS))
async def test_wrong_password_fails_with_server_error(
    cluster_pair: ClusterPair, proxy_factory: Any, user: str
) -> None:
    cl = cluster_pair.cluster
    proxy = proxy_factory(cl.dsn(cluster_pair.old), cl.dsn(cluster_pair.new))
    # A healthy session stays open the whole time.
    good = await asyncpg.connect(
        host=PG_HOST,
        port=proxy.port,
        user=user,
        password=PASSWORDS[user],
        database=cluster_pair.old,
    )
    try:
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            await asyncpg.connect(
                host=PG_HOST,
                port=proxy.port,
                user=user,
                password="wrong",
                database=cluster_pair.old,
            )
        assert info.value.sqlstate == "28P01"
        assert f'password authentication failed for user "{user}"' in str(info.value)

        with pytest.raises(psycopg.OperationalError) as perr:
            psycopg.connect(
                proxy_conninfo(proxy, cluster_pair.old, user, "wrong", sslmode="disable")
            )
        assert f'password authentication failed for user "{user}"' in str(perr.value)

        # Unknown role: the server's own message too.
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(
                host=PG_HOST,
                port=proxy.port,
                user="sp_nobody",
                password="x",
                database=cluster_pair.old,
            )

        await good.execute("INSERT INTO notes VALUES (1, $1, 'still fine')", user)
        assert await good.fetchval("SELECT count(*) FROM notes") == 1
    finally:
        await good.close()
    proxy.wait_mirror_idle()
    assert cluster_pair.rows("new", "SELECT id, body FROM notes") == [(1, "still fine")]
    assert_no_divergences(proxy)


def test_psql_with_password(cluster_pair: ClusterPair, proxy_factory: Any) -> None:
    cl = cluster_pair.cluster
    proxy = proxy_factory(cl.dsn(cluster_pair.old), cl.dsn(cluster_pair.new))
    base = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p", str(proxy.port)]
    ok = subprocess.run(
        [
            *base,
            "-U",
            "sp_scram",
            "-d",
            cluster_pair.old,
            "-c",
            "INSERT INTO notes VALUES (7, 'psql', 'x')",
        ],
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": PASSWORDS["sp_scram"], "PGSSLMODE": "disable"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*base, "-U", "sp_md5", "-d", cluster_pair.old, "-c", "SELECT 1"],
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": "nope", "PGSSLMODE": "disable"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert 'password authentication failed for user "sp_md5"' in bad.stderr
    proxy.wait_mirror_idle()
    assert cluster_pair.rows("new", "SELECT id FROM notes") == [(7,)]
    assert_no_divergences(proxy)


def test_tls_and_scram_together(
    cluster_pair: ClusterPair, proxy_factory: Any, tls_files: tuple[Path, Path]
) -> None:
    """TLS to the proxy, plain to the store: SCRAM without channel binding still works."""
    cert, key = tls_files
    cl = cluster_pair.cluster
    proxy = proxy_factory(
        cl.dsn(cluster_pair.old), cl.dsn(cluster_pair.new), tls_cert=str(cert), tls_key=str(key)
    )
    for i, user in enumerate(PASSWORDS):
        info = proxy_conninfo(proxy, cluster_pair.old, user, PASSWORDS[user], sslmode="require")
        with psycopg.connect(info, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use is True
            conn.execute("INSERT INTO notes VALUES (%s, %s, 'over tls')", (i, user))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(proxy_conninfo(proxy, cluster_pair.old, user, "bad", sslmode="require"))
    proxy.wait_mirror_idle()
    assert len(cluster_pair.rows("new", "SELECT * FROM notes")) == 3
    assert_no_divergences(proxy)


# ------------------------------------------------------------------ (b) TLS


def test_tls_required_and_verified(
    pg_pair: PgPair, proxy_factory: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), tls_cert=str(cert), tls_key=str(key)
    )
    dsn = proxy.dsn(pg_pair.old)
    with psycopg.connect(dsn, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use is True
        for i in range(100):
            conn.execute("INSERT INTO t VALUES (%s, %s)", (i, "x" * i))
        conn.commit()
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE t SET v = %s WHERE id = %s", [(f"u{i}", i) for i in range(0, 100, 3)]
            )
        conn.commit()
    # The certificate really is the one configured: full verification passes.
    with psycopg.connect(
        dsn, sslmode="verify-full", sslrootcert=str(cert), host="localhost", hostaddr=PG_HOST
    ) as conn:
        assert conn.pgconn.ssl_in_use is True
        conn.execute("DELETE FROM t WHERE id >= 90")
    # prefer also negotiates TLS when the proxy offers it.
    with psycopg.connect(dsn, sslmode="prefer") as conn:
        assert conn.pgconn.ssl_in_use is True
    with psycopg.connect(dsn, sslmode="disable") as conn:
        assert conn.pgconn.ssl_in_use is False
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (90,)
    proxy.wait_mirror_idle()
    assert pg_pair.assert_same("t", order="id")[0] == 90
    assert_no_divergences(proxy)


async def test_tls_with_asyncpg(
    pg_pair: PgPair, proxy_factory: Any, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    pg_pair.run_both("CREATE TABLE t (id int PRIMARY KEY, b bytea)")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), tls_cert=str(cert), tls_key=str(key)
    )
    conn = await asyncpg.connect(
        host=PG_HOST, port=proxy.port, user="postgres", database=pg_pair.old, ssl="require"
    )
    try:
        await conn.executemany(
            "INSERT INTO t VALUES ($1, $2)", [(i, bytes([i]) * 5000) for i in range(200)]
        )
        await conn.copy_records_to_table(
            "t", records=[(i, b"\x00" * 70_000) for i in range(1000, 1010)]
        )
        assert await conn.fetchval("SELECT sum(length(b)) FROM t") == 200 * 5000 + 10 * 70_000
    finally:
        await conn.close()
    proxy.wait_mirror_idle()
    pg_pair.assert_same("t", order="id")
    assert_no_divergences(proxy)


def test_without_certificate(pg_pair: PgPair, dual_proxy: ProxyProcess) -> None:
    dsn = dual_proxy.dsn(pg_pair.old)
    with psycopg.connect(dsn, sslmode="prefer") as conn:
        assert conn.pgconn.ssl_in_use is False
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(dsn, sslmode="require")
    # The refused attempt did not disturb the proxy.
    with psycopg.connect(dsn, sslmode="disable") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
