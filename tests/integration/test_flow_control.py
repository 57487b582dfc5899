"""Flow control: a client that reads slowly must not make the proxy buffer a
huge result set in memory; the proxy stops reading the store instead."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from proxy.wire.pg import messages as m
from tests.conftest import PgPair, pg_dsn

ROWS = 200_000
WIDTH = 1000  # ~200 MB of DataRows in all


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_until_ready(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """Read messages until ReadyForQuery; return (DataRow count, bytes read)."""
    rows = 0
    total = 0
    while True:
        while len(buf) >= 5:
            t = buf[0]
            length = struct.unpack_from("!i", buf, 1)[0]
            if len(buf) < 1 + length:
                break
            if t == ord("D"):
                rows += 1
            elif t == ord("E"):
                raise AssertionError(bytes(buf[5 : 1 + length]))
            del buf[: 1 + length]
            if t == ord("Z"):
                return rows, total
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed"
        total += len(chunk)
        buf += chunk


@pytest.mark.parametrize("mode", ["old-only", "dual-write"])
def test_slow_reader_does_not_grow_proxy_memory(
    pg_pair: PgPair, proxy_factory: Any, mode: str
) -> None:
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new), mode=mode)
    assert proxy.proc is not None
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    buf = bytearray()
    sock.sendall(m.startup_message({"user": "postgres", "database": pg_pair.old}))
    read_until_ready(sock, buf)
    before = rss_bytes(proxy.proc.pid)
    sock.sendall(m.query(f"SELECT repeat('x', {WIDTH}) FROM generate_series(1, {ROWS})"))
    time.sleep(3)  # the client reads nothing while the store produces ~200 MB
    during = rss_bytes(proxy.proc.pid)
    rows, _ = read_until_ready(sock, buf)
    assert rows == ROWS
    sock.sendall(m.TERMINATE)
    sock.close()
    # Bounded by the write-buffer high-water marks, not by the result size.
    assert during - before < 32 * 1024 * 1024, (before, during)
