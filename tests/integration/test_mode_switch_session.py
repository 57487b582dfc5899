"""A mode change reaches sessions that are already open, at their next boundary.

A pooled connection opened in ``old-only`` keeps writing after the switch to
``dual-write``: from its next transaction on, its writes reach the new store
too, including through a statement it prepared before the switch and with the
search_path it set before it.  Back in ``old-only`` it stops mirroring.  The
stores are checked on the databases themselves.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.conftest import PgPair, ProxyProcess, pg_dsn

pytestmark = pytest.mark.integration

TOKEN = "mode-switch-token"


def set_mode(proxy: ProxyProcess, mode: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin_port}/mode",
        data=json.dumps({"mode": mode, "reason": "test", "force": True}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    deadline = time.monotonic() + 10
    while proxy.status()["mode"] != mode:
        assert time.monotonic() < deadline, f"the proxy did not apply {mode}: {proxy.status()}"
        time.sleep(0.05)
    return body


def ids(pair: PgPair, which: str) -> list[int]:
    with pair.connect(which, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT id FROM app.t ORDER BY id").fetchall()]


def test_open_session_follows_mode_changes(pg_pair: PgPair, proxy_factory: Any) -> None:
    pg_pair.run_both("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, v text)")
    proxy = proxy_factory(
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode="old-only", admin_token=TOKEN
    )
    with psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True) as conn:
        conn.execute("SET search_path = app, public")
        insert = "INSERT INTO t VALUES (%s, %s)"
        conn.execute(insert, (1, "old-only"), prepare=True)  # a named statement, old only

        set_mode(proxy, "dual-write")
        conn.execute(insert, (2, "prepared before the switch"), prepare=True)
        conn.execute("INSERT INTO t VALUES (3, 'simple')")
        with conn.transaction():
            conn.execute(insert, (4, "in a transaction"), prepare=True)
        # sync (the default): each commit reached the new store before the old one.
        assert ids(pg_pair, "old") == [1, 2, 3, 4]
        assert ids(pg_pair, "new") == [2, 3, 4]

        set_mode(proxy, "old-only")
        conn.execute(insert, (5, "old-only again"), prepare=True)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (5,)
    proxy.wait_mirror_idle()
    assert ids(pg_pair, "old") == [1, 2, 3, 4, 5]
    assert ids(pg_pair, "new") == [2, 3, 4]
    assert proxy.divergences() == []
