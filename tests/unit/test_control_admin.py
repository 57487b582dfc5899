"""POST /mode and GET /mode on the admin server, with a real ModeController.

No control store here: the controller keeps its mode in a state file in the
test's directory, so every accepted change is checked on disk, and every
refused one must leave the file untouched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.control.admin import start_admin
from proxy.control.controller import ModeController
from proxy.control.statefile import StateFileError
from proxy.routing import Mode
from proxy.settings import HostPort, load_settings
from tests.unit.test_admin import exchange

TOKEN = "s3cret-token-value"


class Instance:
    """The instance's own status, as the controller sees it (tests change it)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"mirror_queue_depth": 0, "journal_backlog_units": 0}

    def status(self) -> dict[str, Any]:
        return self.state


async def serve(
    tmp_path: Path, token: str | None, mode: str = "dual-write"
) -> tuple[Any, ModeController, Instance]:
    settings = load_settings(
        old_dsn="postgresql://app@127.0.0.1/old",
        new_dsn="postgresql://app@127.0.0.1/new",
        mode=mode,
        state_file=tmp_path / "state" / "mode.json",
        divergence_log=tmp_path / "divergences.jsonl",
        admin_token=token,
    )
    instance = Instance()
    controller = ModeController(settings, "test:1", instance.status)
    await controller.start()
    server = await start_admin(
        HostPort("127.0.0.1", 0),
        lambda: {},
        lambda: True,
        controller,
        settings.admin_token,
    )
    return server, controller, instance


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[int, ModeController, Instance]]:
    server, controller, instance = await serve(tmp_path, TOKEN)
    try:
        yield server.sockets[0].getsockname()[1], controller, instance
    finally:
        server.close()
        await server.wait_closed()
        await controller.stop()


def post(body: Any, token: str | None = TOKEN, scheme: str = "Bearer") -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    auth = f"Authorization: {scheme} {token}\r\n" if token is not None else ""
    return (
        f"POST /mode HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def on_disk(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "state" / "mode.json").read_text()))


CHANGE = {"mode": "old-only", "reason": "pause mirroring"}


async def test_no_token_configured_refuses_changes(tmp_path: Path) -> None:
    server, controller, _ = await serve(tmp_path, None)
    port = server.sockets[0].getsockname()[1]
    try:
        status, _, body = await exchange(port, post(CHANGE, token="anything"))
        assert status == "HTTP/1.1 403 Forbidden"
        assert "SHADOW_ADMIN_TOKEN" in orjson.loads(body)["error"]
        assert controller.mode is Mode.DUAL_WRITE
        assert on_disk(tmp_path)["mode"] == "dual-write"
    finally:
        server.close()
        await server.wait_closed()
        await controller.stop()


@pytest.mark.parametrize(
    ("token", "scheme"),
    [
        (None, "Bearer"),
        ("wrong", "Bearer"),
        (TOKEN + "x", "Bearer"),
        (TOKEN, "Basic"),
        ("", "Bearer"),
    ],
)
async def test_wrong_or_missing_token_is_401(
    admin: tuple[int, ModeController, Instance], tmp_path: Path, token: str | None, scheme: str
) -> None:
    port, controller, _ = admin
    status, headers, _ = await exchange(port, post(CHANGE, token=token, scheme=scheme))
    assert status == "HTTP/1.1 401 Unauthorized"
    assert headers["www-authenticate"] == "Bearer"
    assert controller.mode is Mode.DUAL_WRITE
    assert on_disk(tmp_path)["epoch"] == 1


async def test_right_token_changes_the_mode_durably(
    admin: tuple[int, ModeController, Instance], tmp_path: Path
) -> None:
    port, controller, _ = admin
    seen: list[Mode] = []
    controller.subscribe(lambda state: seen.append(state.mode))
    status, _, body = await exchange(port, post(CHANGE))
    assert status == "HTTP/1.1 200 OK"
    answer = orjson.loads(body)
    assert (answer["changed"], answer["mode"], answer["epoch"]) == (True, "old-only", 2)
    assert seen == [Mode.OLD_ONLY]
    assert on_disk(tmp_path) | {"changed_at": 0} == {
        "mode": "old-only",
        "epoch": 2,
        "previous": "dual-write",
        "changed_at": 0,
        "changed_by": "admin API 127.0.0.1:" + answer["changed_by"].rsplit(":", 1)[1],
        "reason": "pause mirroring",
        "configured": "dual-write",
    }
    # revert goes back to the previous mode; GET /mode shows the local audit.
    status, _, body = await exchange(port, post({"mode": "revert", "reason": "undo"}))
    assert orjson.loads(body)["mode"] == "dual-write"
    status, _, body = await exchange(port, b"GET /mode HTTP/1.1\r\n\r\n")
    history = orjson.loads(body)["history"]
    assert [(h["from_mode"], h["to_mode"], h["epoch"]) for h in history] == [
        ("dual-write", "old-only", 2),
        ("old-only", "dual-write", 3),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "body must be JSON"),
        ({"mode": "sideways", "reason": "x"}, "mode must be one of"),
        ({"mode": "old-only"}, "reason is required"),
        ({"mode": "old-only", "reason": "  "}, "reason is required"),
        ({"mode": "old-only", "reason": "x", "force": "yes"}, "force must be true or false"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_body_is_400(
    admin: tuple[int, ModeController, Instance], body: Any, message: str
) -> None:
    port, _, _ = admin
    status, _, answer = await exchange(port, post(body))
    assert status == "HTTP/1.1 400 Bad Request"
    assert message in orjson.loads(answer)["error"]


async def test_gate_refusal_is_409_and_force_is_audited(
    admin: tuple[int, ModeController, Instance], tmp_path: Path
) -> None:
    port, controller, instance = admin
    instance.state["mirror_queue_depth"] = 12
    step = {"mode": "shadow-read", "reason": "next step"}
    status, _, body = await exchange(port, post(step))
    assert status == "HTTP/1.1 409 Conflict"
    error = orjson.loads(body)
    assert "gate mirror_backlog failed: 12 units queued on test:1" in error["error"]
    assert "--force" in error["error"]
    assert on_disk(tmp_path)["mode"] == "dual-write"
    status, _, body = await exchange(port, post({**step, "force": True}))
    assert status == "HTTP/1.1 200 OK"
    assert on_disk(tmp_path)["mode"] == "shadow-read"
    audit = [json.loads(line) for line in (tmp_path / "state" / "mode-audit.jsonl").open()]
    assert audit[-1]["forced"] is True
    gates = {g["name"]: g["passed"] for g in audit[-1]["gates"]}
    assert gates["mirror_backlog"] is False and gates["journal"] is True


async def test_skipping_a_step_is_409(admin: tuple[int, ModeController, Instance]) -> None:
    port, controller, _ = admin
    status, _, body = await exchange(
        port, post({"mode": "new-only", "reason": "yolo", "force": True})
    )
    assert status == "HTTP/1.1 409 Conflict"
    assert "one at a time" in orjson.loads(body)["error"]
    assert controller.mode is Mode.DUAL_WRITE


async def test_restart_keeps_the_mode(tmp_path: Path) -> None:
    server, controller, _ = await serve(tmp_path, TOKEN)
    port = server.sockets[0].getsockname()[1]
    await exchange(port, post(CHANGE))
    server.close()
    await server.wait_closed()
    await controller.stop()
    # SHADOW_MODE still says dual-write, as when the file was written: the file wins.
    server, controller, _ = await serve(tmp_path, TOKEN)
    server.close()
    await server.wait_closed()
    await controller.stop()
    assert (controller.mode, controller.epoch) == (Mode.OLD_ONLY, 2)
    # The operator edits SHADOW_MODE: a deliberate change, applied and audited.
    server, controller, _ = await serve(tmp_path, TOKEN, mode="shadow-read")
    try:
        assert (controller.mode, controller.epoch) == (Mode.SHADOW_READ, 3)
        assert on_disk(tmp_path)["configured"] == "shadow-read"
        last = controller.history()[-1]
        assert (last["from_mode"], last["to_mode"], last["who"]) == (
            "old-only",
            "shadow-read",
            "configuration",
        )
    finally:
        server.close()
        await server.wait_closed()
        await controller.stop()


async def test_unusable_state_file_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StateFileError, match="mode.json: cannot read: Not a directory"):
        await serve(tmp_path, TOKEN)


async def test_oversized_body_is_413(admin: tuple[int, ModeController, Instance]) -> None:
    port, controller, _ = admin
    raw = f"POST /mode HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 20000\r\n\r\n"
    status, _, _ = await exchange(port, raw.encode())
    assert status.startswith("HTTP/1.1 413 ")
    assert controller.mode is Mode.DUAL_WRITE


async def test_a_logged_divergence_survives_a_restart(tmp_path: Path) -> None:
    # A divergence logged by an earlier run of the instance (and a torn last line).
    (tmp_path / "divergences.jsonl").write_bytes(
        b'{"ts": 1700000000.0, "kind": "rowcount", "table": "t"}\n{"ts": 17000'
    )
    server, controller, _ = await serve(tmp_path, TOKEN)
    port = server.sockets[0].getsockname()[1]
    try:
        step = {"mode": "shadow-read", "reason": "next"}
        status, _, body = await exchange(port, post(step))
        assert status == "HTTP/1.1 409 Conflict"
        assert "gate divergences failed" in orjson.loads(body)["error"]
    finally:
        server.close()
        await server.wait_closed()
        await controller.stop()
