"""A client that never finishes its startup is dropped, like PostgreSQL's own
authentication_timeout; one that finished is never affected by it."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import psycopg

from proxy.wire.pg import error_fields
from proxy.wire.pg import messages as m
from tests.conftest import PgPair, pg_dsn


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_unfinished_startup_is_dropped(pg_pair: PgPair, proxy_factory: Any) -> None:
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), startup_timeout="1")
    # A healthy session opened before the attack outlives the deadline.
    healthy = psycopg.connect(proxy.dsn(pg_pair.old), autocommit=True)
    half = socket.create_connection(("127.0.0.1", proxy.port))
    half.sendall(m.startup_message({"user": "postgres", "database": pg_pair.old})[:7])
    silent = socket.create_connection(("127.0.0.1", proxy.port))
    started = time.monotonic()
    answer = read_all(half, timeout=10)
    assert time.monotonic() - started < 5
    assert answer[:1] == b"E"
    length = struct.unpack_from("!i", answer, 1)[0]
    fields = error_fields(answer[5 : 1 + length])
    assert fields["C"] == "57014" and "timeout" in fields["M"]
    assert read_all(silent, timeout=10)[:1] == b"E"
    time.sleep(1.2)
    assert healthy.execute("SELECT 1").fetchone() == (1,)
    healthy.close()
    half.close()
    silent.close()
