"""Divergences: the stores are made to differ on purpose and the proxy must say so.

The client always gets the authoritative (old) store's answer; the mirror's
different answer becomes a JSON line in the divergence log (kind, literal-free
fingerprint, tables, what each store answered) and a metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from proxy.mirror.journal import Journal
from tests.conftest import PgPair, ProxyProcess
from tests.integration.conftest import run_psql

pytestmark = pytest.mark.integration

SECRET_TEXT = "sekrit-literal-8841"
SECRET_NUMBER = "73310"


def metric_value(proxy: ProxyProcess, name: str, **labels: str) -> float:
    code, body = proxy.http("/metrics")
    assert code == 200
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", re.MULTILINE)
    found = pattern.search(body.decode())
    assert found, f"{name}{{{want}}} not in /metrics"
    return float(found.group(1))


def wait_for_kinds(proxy: ProxyProcess, *kinds: str) -> list[dict[str, object]]:
    proxy.wait_mirror_idle()
    events = proxy.divergences()
    assert {e["kind"] for e in events} >= set(kinds), events
    return events


def test_rowcount_and_error_divergences_simple_protocol(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both(
        "CREATE TABLE ledger (id int PRIMARY KEY, v int NOT NULL, note text);"
        "INSERT INTO ledger SELECT g, g, 'seed' FROM generate_series(1, 5) g;"
    )
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute("INSERT INTO ledger VALUES (6, 6, 'only on new')")
        c.execute("INSERT INTO ledger VALUES (%s, %s, 'collides')", (int(SECRET_NUMBER), 10**9))

    # Touches 5 rows on old, 6 on new.
    out = run_psql(
        dual_proxy.port,
        pg_pair.old,
        f"UPDATE ledger SET v = v + 1, note = '{SECRET_TEXT}' WHERE v < {SECRET_NUMBER};\n",
    )
    assert out.returncode == 0 and out.stderr == ""
    # Succeeds on old, unique violation on new.
    out = run_psql(
        dual_proxy.port,
        pg_pair.old,
        f"INSERT INTO ledger VALUES ({SECRET_NUMBER}, 1, '{SECRET_TEXT}');\n",
    )
    assert out.returncode == 0 and out.stderr == ""

    events = wait_for_kinds(dual_proxy, "rowcount", "error")
    rowcount = next(e for e in events if e["kind"] == "rowcount")
    assert rowcount["old"] == ["UPDATE 5"]
    assert rowcount["new"] == ["UPDATE 6"]
    assert "ledger" in rowcount["tables"]  # type: ignore[operator]
    assert str(rowcount["fingerprint"]).lower().startswith("update ledger set")

    error = next(e for e in events if e["kind"] == "error")
    assert error["old"] == ["INSERT 0 1"]
    assert error["new_error"]["sqlstate"] == "23505"  # type: ignore[index]
    assert "ledger" in error["tables"]  # type: ignore[operator]
    assert str(error["fingerprint"]).lower().startswith("insert into ledger values")

    # No literal from any statement anywhere in the log (fingerprints, answers, messages).
    raw = dual_proxy.divergence_log.read_text()
    assert SECRET_TEXT not in raw
    assert SECRET_NUMBER not in raw
    for e in events:
        assert json.dumps(e)  # each line is a JSON object

    assert metric_value(dual_proxy, "shadowproxy_divergences_total", kind="rowcount") >= 1
    assert metric_value(dual_proxy, "shadowproxy_divergences_total", kind="error") >= 1
    status = dual_proxy.status()
    assert status["divergences"].get("rowcount", 0) >= 1
    assert status["divergences"].get("error", 0) >= 1

    # The unit the new store refused is kept whole for repair, never dropped:
    # it is in the rejected journal, literal values included (it is data).
    assert status["rejected_units"] == 1
    rejected = Journal.open_readonly(Path(dual_proxy.env["SHADOW_JOURNAL_DIR"]) / "rejected")
    try:
        [(_, unit)] = rejected.read_pending()
    finally:
        rejected.close()
    assert [it.sql.strip() for it in unit.items] == [
        f"INSERT INTO ledger VALUES ({SECRET_NUMBER}, 1, '{SECRET_TEXT}');"
    ]
    assert unit.items[0].tags == ["INSERT 0 1"]

    # The client saw the old store's answers: both writes are there.
    with pg_pair.connect("old") as c:
        assert c.execute(
            "SELECT count(*) FROM ledger WHERE note = %s", (SECRET_TEXT,)
        ).fetchone() == (6,)


def test_divergences_extended_protocol_and_transactions(
    pg_pair: PgPair, dual_proxy: ProxyProcess
) -> None:
    pg_pair.run_both("CREATE TABLE kv (k text PRIMARY KEY, n int NOT NULL)")
    with pg_pair.connect("new", autocommit=True) as c:
        c.execute("INSERT INTO kv VALUES (%s, -1)", (SECRET_TEXT,))
        c.execute("INSERT INTO kv VALUES ('extra', 0)")
    with psycopg.connect(dual_proxy.dsn(pg_pair.old)) as conn:
        conn.execute("INSERT INTO kv VALUES ('a', 1), ('b', 2)")
        conn.commit()
        # In a transaction: the DELETE's row count differs, then the INSERT collides.
        conn.execute("DELETE FROM kv WHERE n >= %s", (0,))
        conn.execute("INSERT INTO kv VALUES (%s, %s)", (SECRET_TEXT, int(SECRET_NUMBER)))
        conn.commit()
        # The client's session is unaffected by the mirror's trouble.
        assert conn.execute("SELECT n FROM kv").fetchall() == [(int(SECRET_NUMBER),)]
    events = wait_for_kinds(dual_proxy, "rowcount", "error")
    rowcount = next(e for e in events if e["kind"] == "rowcount")
    assert rowcount["old"] == ["DELETE 2"] and rowcount["new"] == ["DELETE 3"]
    error = next(e for e in events if e["kind"] == "error")
    assert error["old"] == ["INSERT 0 1"]
    assert error["new_error"]["sqlstate"] == "23505"  # type: ignore[index]
    assert "kv" in error["tables"]  # type: ignore[operator]
    raw = dual_proxy.divergence_log.read_text()
    assert SECRET_TEXT not in raw and SECRET_NUMBER not in raw
    assert metric_value(dual_proxy, "shadowproxy_divergences_total", kind="rowcount") >= 1
