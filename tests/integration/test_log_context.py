"""JSON logs: a session's records carry its id, and every record the mode and epoch."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.conftest import PgPair, pg_dsn

pytestmark = pytest.mark.integration


def test_session_records_carry_session_mode_and_epoch(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), log_format="json")
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"\x00\x00\x00\x08\x00\x00\x00\x00")  # not a startup packet: 08P01
        s.settimeout(5)
        assert s.recv(1) == b"E"
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
        found = [r for r in records if "protocol error" in r.get("message", "")]
        if found:
            break
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    record = found[0]
    assert isinstance(record["session"], int)
    assert (record["mode"], record["epoch"]) == ("dual-write", proxy.status()["epoch"])
