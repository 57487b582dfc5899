"""A tiny HTTP/1.1 admin server: /metrics, /healthz, /readyz, /status, GET and POST /mode.

One request per connection (every response says ``Connection: close``), so the
handler is: read the head (bounded size, bounded time) and a small body,
route on (method, path), write one response, close.  No framework: the surface
is a handful of routes, and a dependency here would sit in every proxy
instance for no gain.

``POST /mode`` changes the mode and needs ``Authorization: Bearer <token>``
(``SHADOW_ADMIN_TOKEN``, compared in constant time).  With no token
configured the admin API refuses every change (403): an unauthenticated
endpoint that can move production traffic must not exist by default.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from proxy.control.changes import ChangeRefused, ChangeRequest, ChangeResult, ControlUnavailable
from proxy.metrics import REGISTRY
from proxy.routing import Mode
from proxy.settings import HostPort

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # bytes of request line + headers
BODY_LIMIT = 16 * 1024  # bytes of a request body (POST /mode is a few dozen)
CLIENT_TIMEOUT = 10.0  # seconds for a client to send its head and take the answer
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


class ModeControl(Protocol):
    """What the admin API needs from the mode controller."""

    async def request_change(self, req: ChangeRequest) -> ChangeResult: ...

    def history(self) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""
    peer: str = ""


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


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: bytes,
    route: Handler,
) -> Response:
    """Parse the head, read a Content-Length body (bounded), route."""
    request = _parse_head(head)
    if request is None:
        return Response(400, b"bad request\n")
    length_text = request.headers.get("content-length", "0")
    if not length_text.isdigit():
        return Response(400, b"bad content-length\n")
    length = int(length_text)
    if length > BODY_LIMIT:
        return Response(413, b"request body too large\n")
    body = await reader.readexactly(length) if length else b""
    peer = writer.get_extra_info("peername")
    peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
    return await route(replace(request, body=body, peer=peer_text))


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


def _json(status: int, payload: Any) -> Response:
    return Response(status, orjson.dumps(payload, default=str) + b"\n", _JSON)


def _error(status: int, message: str, **extra: Any) -> Response:
    headers = (("WWW-Authenticate", "Bearer"),) if status == 401 else ()
    body = orjson.dumps({"error": message, **extra}, default=str) + b"\n"
    return Response(status, body, _JSON, headers)


def _authorized(request: Request, token: SecretStr) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def _change_request(body: bytes, peer: str) -> ChangeRequest | str:
    """The JSON body of POST /mode as a ChangeRequest, or what is wrong with it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 'body must be JSON: {"mode": ..., "reason": ..., "force": false}'
    if not isinstance(data, dict):
        return "body must be a JSON object"
    raw_mode, reason, force = data.get("mode"), data.get("reason"), data.get("force", False)
    who = data.get("who")
    if raw_mode == "revert":
        target: Mode | None = None
    else:
        try:
            target = Mode(raw_mode)
        except ValueError:
            return f"mode must be one of {', '.join(m.value for m in Mode)} or revert"
    if not isinstance(reason, str) or not reason.strip():
        return "reason is required (a non-empty string): it goes to the audit"
    if not isinstance(force, bool):
        return "force must be true or false"
    if who is not None and not isinstance(who, str):
        return "who must be a string"
    caller = f"{who.strip()[:200]} via admin API {peer}" if who else f"admin API {peer}"
    return ChangeRequest(target, reason.strip()[:1000], force, caller)


def mode_routes(control: ModeControl, token: SecretStr | None) -> dict[tuple[str, str], Handler]:
    """GET /mode (state and local history) and POST /mode (guarded by the token)."""

    async def get_mode(_: Request) -> Response:
        return _json(200, {**control.status(), "history": control.history()})

    async def post_mode(request: Request) -> Response:
        if token is None:
            return _error(
                403, "mode changes through the admin API are disabled: set SHADOW_ADMIN_TOKEN"
            )
        if not _authorized(request, token):
            return _error(
                401, "missing or wrong bearer token (Authorization: Bearer <SHADOW_ADMIN_TOKEN>)"
            )
        req = _change_request(request.body, request.peer)
        if isinstance(req, str):
            return _error(400, req)
        try:
            result = await control.request_change(req)
        except ChangeRefused as exc:
            gates = exc.decision.gates_json() if exc.decision else []
            return _error(409, str(exc), gates=gates)
        except ControlUnavailable as exc:
            return _error(503, f"mode not changed, the control store is unavailable: {exc}")
        return _json(200, result.to_json())

    return {("GET", "/mode"): get_mode, ("POST", "/mode"): post_mode}


async def start_admin(
    listen: HostPort,
    status: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
    control: ModeControl | None = None,
    token: SecretStr | None = None,
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

    # (method, path) -> handler
    routes: dict[tuple[str, str], Handler] = {
        ("GET", "/metrics"): metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        ("GET", "/status"): status_json,
    }
    if control is not None:
        routes.update(mode_routes(control, token))

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
                    response = await _answer(reader, writer, head, route)
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
