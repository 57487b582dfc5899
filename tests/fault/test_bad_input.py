"""Malformed clients against a running proxy, beside a healthy session.

Raw sockets send what no driver would: random bytes, truncated frames, absurd
lengths, unknown message types, garbage after valid queries.  For each, the
proxy must answer ``08P01`` (protocol_violation) or close the connection,
within a timeout (never hang), and keep serving: a healthy psycopg session
running at the same time finishes all its work, new sessions are accepted
afterwards, no session is left behind on the old store, and what the malformed
sessions committed before they broke is mirrored like anything else.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import PgPair, ProxyProcess, pg_dsn

pytestmark = pytest.mark.fault

PROTOCOL_3 = 196608
ATTACKER = "sp-attack"  # application_name of every attacking session that gets that far
TIMEOUT = 5.0  # seconds the proxy gets to answer or close; more means it hung


# ----------------------------------------------------------------- wire helpers


def startup_packet(db: str, user: str = "postgres") -> bytes:
    params = {"user": user, "database": db, "application_name": ATTACKER}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", 8 + len(body), PROTOCOL_3) + body


def query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", 4 + len(body)) + body


def messages(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Complete backend messages (type, body) in ``data``."""
    pos = 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if length < 4 or pos + 1 + length > len(data):
            return
        yield data[pos : pos + 1], data[pos + 5 : pos + 1 + length]
        pos += 1 + length


def error_codes(data: bytes) -> list[str]:
    """SQLSTATEs (field C) of every ErrorResponse in ``data``."""
    codes = []
    for t, body in messages(data):
        if t == b"E":
            for field in body.split(b"\0"):
                if field[:1] == b"C":
                    codes.append(field[1:].decode())
    return codes


class Conn:
    """A raw client socket with a deadline on every read."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> bool:
        """False if the proxy already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_until_ready(self) -> bytes:
        """Read up to and including the next ReadyForQuery."""
        while True:
            for t, _ in messages(self.buf):
                if t == b"Z":
                    out, self.buf = self._split_after_ready()
                    return out
            chunk = self.sock.recv(65536)
            assert chunk, f"proxy closed before ReadyForQuery: {self.buf!r}"
            self.buf += chunk

    def _split_after_ready(self) -> tuple[bytes, bytes]:
        pos = 0
        for t, body in messages(self.buf):
            pos += 5 + len(body)
            if t == b"Z":
                break
        return self.buf[:pos], self.buf[pos:]

    def read_to_close(self) -> bytes:
        """Everything the proxy sends until it closes; fails if it does not close in time."""
        data, self.buf = self.buf, b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return data
                data += chunk
        except TimeoutError:
            raise AssertionError(f"proxy neither answered nor closed: {data[:200]!r}") from None
        except ConnectionResetError:
            return data  # closed with our unread bytes in its buffer: a reset is a close

    def login(self, db: str) -> None:
        assert self.send(startup_packet(db))
        out = self.read_until_ready()
        assert b"R\0\0\0\x08\0\0\0\0" in out, out[:200]  # AuthenticationOk (trust)

    def close(self) -> None:
        self.sock.close()


def expect_protocol_violation(conn: Conn) -> None:
    """The proxy answers 08P01 and closes, on its own (we do not close first)."""
    data = conn.read_to_close()
    assert "08P01" in error_codes(data), data[:300]
    conn.close()


def expect_refused_or_closed(conn: Conn, allowed: frozenset[str] = frozenset({"08P01"})) -> None:
    """Half-close our side; the proxy may answer an error, then must close."""
    with contextlib.suppress(OSError):  # already reset by the proxy
        conn.sock.shutdown(socket.SHUT_WR)
    data = conn.read_to_close()
    codes = error_codes(data)
    assert set(codes) <= allowed, (codes, data[:300])
    conn.close()


# ------------------------------------------------------------------------ attacks


def attack_random_bytes(proxy: ProxyProcess) -> None:
    for seed in range(16):
        rng = random.Random(seed)
        size = [1, 4096][seed] if seed < 2 else rng.randint(1, 4096)
        data = rng.randbytes(size)
        if seed % 4 == 2:  # a plausible startup length, random code and body
            data = struct.pack("!i", min(max(size, 8), 10_000)) + data
        elif seed % 4 == 3:  # protocol 3.0, random parameters
            data = struct.pack("!ii", min(max(size, 8), 10_000), PROTOCOL_3) + data
        conn = Conn(proxy)
        conn.send(data)
        # A random "startup packet" may also be refused as an unsupported protocol
        # version (0A000) or for lacking a user (28000), exactly as PostgreSQL does.
        expect_refused_or_closed(conn, frozenset({"08P01", "0A000", "28000"}))


def attack_truncated_frames(proxy: ProxyProcess, db: str) -> None:
    packet = startup_packet(db)
    # A startup packet cut short.
    conn = Conn(proxy)
    conn.send(packet[: len(packet) // 2])
    expect_refused_or_closed(conn)
    # A valid startup, then (before authentication finished) a truncated Query.
    conn = Conn(proxy)
    conn.send(packet + query("SELECT 1")[:7])
    expect_refused_or_closed(conn)
    # Logged in, then truncated frames of several shapes, then close.
    for frame in (b"Q", b"Q\0\0", query("SELECT 1")[:-3], b"P\0\0\0\x40name\0SELE"):
        conn = Conn(proxy)
        conn.login(db)
        conn.send(frame)
        expect_refused_or_closed(conn)


def attack_huge_startup(proxy: ProxyProcess) -> None:
    for length in (0x7FFFFFFF, 10_001, 1 << 20, -8, 3):
        conn = Conn(proxy)
        conn.send(struct.pack("!ii", length, PROTOCOL_3) + b"user\0postgres\0\0")
        expect_protocol_violation(conn)


def attack_oversized_message(proxy: ProxyProcess, db: str) -> None:
    for t in (b"Q", b"P", b"d"):
        conn = Conn(proxy)
        conn.login(db)
        conn.send(t + struct.pack("!i", 0x7FFFFFFF))
        expect_protocol_violation(conn)


def attack_unknown_type(proxy: ProxyProcess, db: str) -> None:
    for t in (b"z", b"\x00", b"\xff", b"A"):
        conn = Conn(proxy)
        conn.login(db)
        conn.send(t + struct.pack("!i", 4))
        expect_protocol_violation(conn)


def attack_garbage_mid_session(proxy: ProxyProcess, db: str) -> None:
    for seed in range(4):
        rng = random.Random(1000 + seed)
        conn = Conn(proxy)
        conn.login(db)
        for sql in (
            "SELECT 1",
            f"INSERT INTO items (id, note) VALUES ({900_000 + seed}, 'before garbage')",
            "BEGIN",
            f"UPDATE items SET note = 'in txn' WHERE id = {900_000 + seed}",
            "COMMIT",
        ):
            assert conn.send(query(sql))
            out = conn.read_until_ready()
            assert not error_codes(out), out
        # 0xff is no message type: whatever follows, this is a protocol violation.
        conn.send(b"\xff" + rng.randbytes(rng.randint(4, 2048)))
        expect_protocol_violation(conn)


# --------------------------------------------------------------------------- test


def metric(proxy: ProxyProcess, name: str, labels: str = "") -> float:
    code, body = proxy.http("/metrics")
    assert code == 200
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    found = pattern.findall(body.decode())
    return sum(float(v) for v in found)


def test_malformed_clients_beside_a_healthy_session(pg_pair: PgPair, proxy_factory: Any) -> None:
    pg_pair.run_both("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)")
    proxy = proxy_factory(pg_dsn(pg_pair.old), pg_dsn(pg_pair.new))
    attacks_done = threading.Event()
    healthy: dict[str, Any] = {"done": 0, "error": None}

    def healthy_session() -> None:
        try:
            with psycopg.connect(proxy.dsn(pg_pair.old), connect_timeout=10) as conn:
                i = 0
                while i < 200 or not attacks_done.is_set():
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO items (id, note) VALUES (%s, %s)", (i, f"healthy {i}")
                        )
                    i += 1
                    healthy["done"] = i
        except BaseException as exc:
            healthy["error"] = exc

    worker = threading.Thread(target=healthy_session, daemon=True)
    worker.start()
    try:
        attack_random_bytes(proxy)
        attack_truncated_frames(proxy, pg_pair.old)
        attack_huge_startup(proxy)
        attack_oversized_message(proxy, pg_pair.old)
        attack_unknown_type(proxy, pg_pair.old)
        attack_garbage_mid_session(proxy, pg_pair.old)
    finally:
        attacks_done.set()
        worker.join(60)
    assert not worker.is_alive(), "the healthy session hung"
    assert healthy["error"] is None, f"the healthy session failed: {healthy['error']!r}"
    assert healthy["done"] >= 200

    # The proxy is still up and accepts new sessions.
    assert proxy.proc is not None and proxy.proc.poll() is None
    with psycopg.connect(proxy.dsn(pg_pair.old), connect_timeout=5) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (healthy["done"] + 4,)

    assert metric(proxy, "shadowproxy_protocol_errors_total", '{side="client"}') > 0
    assert metric(proxy, "shadowproxy_session_errors_total") == 0, "an attack hit an internal error"

    # No malformed session is left behind on the old store.
    deadline = time.monotonic() + 3
    with pg_pair.connect("old", autocommit=True) as c:
        while True:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name <> 'shadowproxy-sequences'"  # the proxy's own
            ).fetchone()
            if row == (0,) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert row == (0,), "sessions of malformed clients were left on the old store"

    # What the malformed sessions committed before they broke was mirrored too.
    proxy.wait_mirror_idle()
    pg_pair.assert_same("items", order="id")
    assert proxy.divergences() == []
