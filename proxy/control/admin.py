"""A tiny HTTP/1.1 admin server: /metrics, /healthz, /readyz, /status.

One request per connection (every response says ``Connection: close``), so the
handler is: read the head (bounded size, bounded time), route on (method, path),
write one response, close.  No framework: the surface is four GET routes, and a
dependency here would sit in every proxy instance for no gain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.metrics import REGISTRY
from proxy.settings import HostPort

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # bytes of request line + headers
CLIENT_TIMEOUT = 10.0  # seconds for a client to send its head and take the answer
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = _TEXT
    extra_headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.extra_headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


def _parse_head(head: bytes) -> Request | None:
    """The request line and headers, or None when they are not HTTP/1.x."""
    try:
        request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return Request(method, target.partition("?")[0], headers)


async def start_admin(
    listen: HostPort, status: Callable[[], dict[str, Any]], ready: Callable[[], bool]
) -> asyncio.Server:
    """Start serving; the caller owns the returned server (close + wait_closed)."""

    async def metrics(_: Request) -> Response:
        return Response(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return Response(200, b"ok\n")

    async def readyz(_: Request) -> Response:
        return Response(200, b"ready\n") if ready() else Response(503, b"not ready\n")

    async def status_json(_: Request) -> Response:
        return Response(200, orjson.dumps(status(), default=str), "application/json")

    # (method, path) -> handler; POST /mode joins here.
    routes: dict[tuple[str, str], Handler] = {
        ("GET", "/metrics"): metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        ("GET", "/status"): status_json,
    }

    async def route(request: Request) -> Response:
        handler = routes.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        allowed = sorted(method for method, path in routes if path == request.path)
        if allowed:
            return Response(
                405, b"method not allowed\n", extra_headers=(("Allow", ", ".join(allowed)),)
            )
        return Response(404, b"not found\n")

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    response = Response(431, b"request head too large\n")
                else:
                    request = _parse_head(head)
                    response = await route(request) if request else Response(400, b"bad request\n")
                writer.write(response.encode())
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # slow or vanished client: nothing to answer, just close
        except Exception:  # top of the connection task: log, answer 500, close
            log.exception("admin request failed")
            writer.write(Response(500, b"internal error\n").encode())
        finally:
            writer.close()

    # limit= bounds readuntil(): past it, LimitOverrunError instead of unbounded buffering.
    return await asyncio.start_server(on_connection, listen.host, listen.port, limit=HEAD_LIMIT)
