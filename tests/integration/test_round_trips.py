"""What the proxy sends the authoritative store: no round trip the client did not ask for.

A wire tap (a plain TCP relay that parses the frontend messages going to the
real PostgreSQL) sits between the proxy and the old store.  pgbench's
tpcb-like transaction in the extended protocol sends Parse/Bind/Describe/
Execute/Sync per statement and never a Flush; the mirror (in ``sync``, the
commit waits for it) must not add one, nor any other request: each Flush is a
round trip more on every mirrored transaction.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import PG_HOST, PG_PORT, PgPair, pg_dsn
from tests.integration.conftest import assert_no_divergences
from tests.integration.test_pgbench import assert_pgbench_tables_same, pgbench

pytestmark = [pytest.mark.integration]

_UNTYPED = (80877103, 80877104)  # SSLRequest, GSSENCRequest: a StartupMessage follows


def _shut(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class WireTap:
    """Relays connections to the real PostgreSQL, counting the frontend message
    types of the connections a client named ``application`` opened (the proxy's
    own connections to the store, for its catalog and sequences, are not counted)."""

    def __init__(self, application: str = "pgbench") -> None:
        self.application = application
        self.listener = socket.create_server((PG_HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((PG_HOST, PG_PORT))
            self._socks += [client, server]
            threading.Thread(target=self._frontend, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def _frontend(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        started = False
        counted = False
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                buf += data
                while True:
                    if not started:  # length-prefixed, no type byte
                        if len(buf) < 8:
                            break
                        (n,) = struct.unpack_from("!i", buf)
                        if len(buf) < n:
                            break
                        started = struct.unpack_from("!i", buf, 4)[0] not in _UNTYPED
                        if started:
                            words = buf[8:n].split(b"\0")
                            params = dict(zip(words[::2], words[1::2], strict=False))
                            counted = params.get(b"application_name") == self.application.encode()
                        buf = buf[n:]
                        continue
                    if len(buf) < 5:
                        break
                    (n,) = struct.unpack_from("!i", buf, 1)
                    if len(buf) < 1 + n:
                        break
                    if counted:
                        with self._lock:
                            self.counts[chr(buf[0])] += 1
                    buf = buf[1 + n :]
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def counted(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


@pytest.fixture
def tap() -> Iterator[WireTap]:
    t = WireTap()
    yield t
    t.close()


@pytest.mark.parametrize("consistency", ["sync", "async"])
def test_tpcb_like_sends_no_request_the_client_did_not(
    pg_pair: PgPair, proxy_factory: object, tap: WireTap, consistency: str
) -> None:
    for db in (pg_pair.old, pg_pair.new):
        pgbench(PG_PORT, db, "-i", "-s", "1", "-q")
    proxy = proxy_factory(  # type: ignore[operator]
        pg_dsn(pg_pair.old, port=tap.port),
        pg_dsn(pg_pair.new),
        mirror_consistency=consistency,
    )
    txns = 40
    args = ("-n", "-M", "extended", "-c", "2", "-t", str(txns))
    pgbench(proxy.port, pg_pair.old, *args)
    proxy.wait_mirror_idle(timeout=60)
    assert_pgbench_tables_same(pg_pair)
    assert_no_divergences(proxy)
    direct = WireTap()  # the same run straight to PostgreSQL: what the client itself sends
    try:
        pgbench(direct.port, pg_pair.old, *args)
    finally:
        direct.close()
    through, straight = tap.counted(), direct.counted()
    assert through.get("H", 0) == 0, through
    assert straight["S"] == 7 * txns * 2, straight
    assert {t: through.get(t, 0) for t in "PBDESQ"} == {t: straight.get(t, 0) for t in "PBDESQ"}


def _write_syscalls(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))


@pytest.mark.parametrize("consistency", ["sync", "async"])
def test_a_transaction_costs_one_write_per_message_batch_and_one_mirror_pipeline(
    pg_pair: PgPair, proxy_factory: object, tap: WireTap, consistency: str
) -> None:
    """A tpcb-like transaction reaches the mirror as one pipeline under one Sync
    (in ``sync`` the proxy's own COMMIT included, so the store answers it in one
    read), and in ``sync`` the held COMMIT goes to the old store with its Sync in
    one write: the proxy writes once per batch the client sent, once per answer,
    once for the mirror, and no more."""
    for db in (pg_pair.old, pg_pair.new):
        pgbench(PG_PORT, db, "-i", "-s", "1", "-q")
    proxy = proxy_factory(  # type: ignore[operator]
        pg_dsn(pg_pair.old), pg_dsn(pg_pair.new, port=tap.port), mirror_consistency=consistency
    )
    txns, clients = 100, 2
    before = _write_syscalls(proxy.proc.pid)
    pgbench(proxy.port, pg_pair.old, "-n", "-M", "extended", "-c", str(clients), "-t", str(txns))
    writes = _write_syscalls(proxy.proc.pid) - before
    proxy.wait_mirror_idle(timeout=60)
    assert_pgbench_tables_same(pg_pair)
    assert_no_divergences(proxy)
    mirrored = tap.counted()
    n = txns * clients
    # BEGIN, three UPDATEs, the INSERT and the COMMIT; the SELECT is not mirrored.
    assert mirrored.get("E", 0) == 6 * n, mirrored
    assert mirrored.get("S", 0) == n, mirrored
    assert mirrored.get("Q", 0) == 0, mirrored
    # Per transaction: 7 answers to pgbench, 7 batches to the old store, 1 pipeline
    # to the mirror.  The slack covers the sessions' startup and the proxy's log.
    assert 15 * n <= writes < 15 * n + n // 4, writes
