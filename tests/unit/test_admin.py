"""Admin HTTP server over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.control import admin
from proxy.control.admin import start_admin
from proxy.settings import HostPort


class Probe:
    """What the server reports; tests flip it."""

    def __init__(self) -> None:
        self.is_ready = True
        self.broken = False
        self.state: dict[str, Any] = {"mode": "dual-write", "epoch": 3, "instances": ["a", "b"]}

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("status source failed")
        return self.state

    def ready(self) -> bool:
        return self.is_ready


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def port(probe: Probe) -> AsyncIterator[int]:
    server = await start_admin(HostPort("127.0.0.1", 0), probe.status, probe.ready)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; (status line, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return status_line, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("raw", "status_line", "content_type", "body"),
    [
        (get("/healthz"), "HTTP/1.1 200 OK", "text/plain; charset=utf-8", b"ok\n"),
        (get("/readyz"), "HTTP/1.1 200 OK", "text/plain; charset=utf-8", b"ready\n"),
        (get("/healthz?verbose=1"), "HTTP/1.1 200 OK", "text/plain; charset=utf-8", b"ok\n"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK", "text/plain; charset=utf-8", b"ok\n"),
        (get("/nothing"), "HTTP/1.1 404 Not Found", "text/plain; charset=utf-8", b"not found\n"),
        (get("/"), "HTTP/1.1 404 Not Found", "text/plain; charset=utf-8", b"not found\n"),
        (
            get("/status", "POST"),
            "HTTP/1.1 405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"method not allowed\n",
        ),
        (
            get("/metrics", "DELETE"),
            "HTTP/1.1 405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"method not allowed\n",
        ),
        (
            b"GARBAGE\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            b"bad request\n",
        ),
        (
            b"GET /healthz SPDY/3\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            b"bad request\n",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nno-colon\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            "text/plain; charset=utf-8",
            b"bad request\n",
        ),
    ],
)
async def test_routes(
    port: int, raw: bytes, status_line: str, content_type: str, body: bytes
) -> None:
    got_status, headers, got_body = await exchange(port, raw)
    assert (got_status, headers["content-type"], got_body) == (status_line, content_type, body)


async def test_method_not_allowed_says_allow(port: int) -> None:
    _, headers, _ = await exchange(port, get("/healthz", "PUT"))
    assert headers["allow"] == "GET"


async def test_metrics(port: int) -> None:
    status_line, headers, body = await exchange(port, get("/metrics"))
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert b"shadowproxy_mode_epoch" in body


async def test_status_json(port: int, probe: Probe) -> None:
    status_line, headers, body = await exchange(port, get("/status"))
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == probe.state


async def test_not_ready(port: int, probe: Probe) -> None:
    probe.is_ready = False
    status_line, _, body = await exchange(port, get("/readyz"))
    assert (status_line, body) == ("HTTP/1.1 503 Service Unavailable", b"not ready\n")


async def test_status_failure_is_500(port: int, probe: Probe) -> None:
    probe.broken = True
    status_line, _, body = await exchange(port, get("/status"))
    assert (status_line, body) == ("HTTP/1.1 500 Internal Server Error", b"internal error\n")


async def test_head_too_large(port: int) -> None:
    # A head past 16 KiB without its blank line; small enough to be read fully, so the
    # server's close is a clean FIN and the client sees the answer.
    raw = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (17 * 1024) + b"\r\n"
    status_line, _, _ = await exchange(port, raw)
    assert status_line == "HTTP/1.1 431 Request Header Fields Too Large"


async def test_slow_client_is_dropped(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "CLIENT_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
    writer.close()


async def test_client_that_hangs_up_early(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hea")
    writer.close()
    await writer.wait_closed()
    # The server survives and still answers.
    assert (await exchange(port, get("/healthz")))[2] == b"ok\n"
