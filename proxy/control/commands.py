"""``shadowproxy mode …``: show, set, revert and history of the mode.

With a control store (``SHADOW_CONTROL_DSN``) the command talks to it
directly and waits for every live instance's heartbeat to carry the new
epoch.  Without one it talks to the single instance's admin API
(``--admin URL``, default ``http://SHADOW_ADMIN_LISTEN``) with the bearer
token (``--token`` or ``SHADOW_ADMIN_TOKEN``); the instance answers once it
has written the state file and applied the mode.

Exit codes: 0 done (every live instance applied it), 1 not applied everywhere
or the instance/store could not be reached, 3 refused by the ladder or a gate.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from proxy.control import acks as ack
from proxy.control import changes
from proxy.control.changes import ChangeRefused, ChangeRequest
from proxy.control.controller import STORE_ERRORS
from proxy.control.store import ControlStore
from proxy.routing import Mode
from proxy.settings import Settings

EXIT_NOT_APPLIED = 1
EXIT_REFUSED = 3


def _print_json(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, default=str, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _err(message: str) -> None:
    print(f"shadowproxy: {message}", file=sys.stderr)


# ------------------------------------------------------------------ admin API (no store)


class AdminClient:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status), orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return int(exc.code), orjson.loads(raw)
            except orjson.JSONDecodeError:
                return int(exc.code), {"error": raw.decode(errors="replace").strip()}


def admin_client(args: argparse.Namespace, settings: Settings) -> AdminClient:
    url = args.admin or f"http://{settings.admin_listen}"
    token = args.token
    if token is None and settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
    return AdminClient(url, token)


# ------------------------------------------------------------------------ show


def _instance_line(row: dict[str, Any], epoch: int) -> str:
    status = "applied" if row["epoch"] >= epoch else "NOT APPLIED"
    if not row.get("live", True):
        status = "SILENT (no heartbeat: crashed or cut off from the control store)"
    age = row.get("heartbeat_age")
    age_text = f"heartbeat {age:.1f}s ago" if isinstance(age, int | float) else ""
    return f"  {row['instance']:<32} epoch {row['epoch']:<5} {row['mode']:<12} {age_text}  {status}"


def _print_state(state: dict[str, Any]) -> None:
    print(f"mode: {state['mode']}  epoch: {state['epoch']}")
    print(f"previous: {state.get('previous') or '-'}")
    print(f"changed: {_when(state.get('changed_at'))} by {state.get('changed_by') or '-'}")
    print(f"reason: {state.get('reason') or '-'}")


async def show(settings: Settings, args: argparse.Namespace) -> int:
    if settings.control_dsn is None:
        return _show_admin(admin_client(args, settings), args.json)
    store = await ControlStore.connect(settings.control_dsn)
    try:
        state = await store.read_mode()
        rows = await store.instances()
    finally:
        await store.close()
    live = [r for r in rows if r["live"]]
    silent = [r for r in rows if not r["live"] and r["recent"]]
    if args.json:
        _print_json({**(state.to_json() if state else {}), "instances": live, "silent": silent})
        return 0
    if state is None:
        print("no mode set yet: the first instance to start writes its SHADOW_MODE")
        return 0
    _print_state(state.to_json())
    print(f"live instances ({len(live)}):")
    for row in live:
        print(_instance_line(row, state.epoch))
    if silent:
        print(f"silent instances ({len(silent)}):")
        for row in silent:
            print(_instance_line(row, state.epoch))
    return 0


def _show_admin(client: AdminClient, as_json: bool) -> int:
    code, body = client.call("GET", "/mode")
    if code != 200:
        _err(f"admin API answered {code}: {body.get('error', body)}")
        return EXIT_NOT_APPLIED
    body.pop("history", None)
    if as_json:
        _print_json(body)
        return 0
    _print_state(body)
    print(f"instance: {body.get('instance')} (state file {body.get('state_file')})")
    return 0


# ------------------------------------------------------------------------ set / revert


def _request(args: argparse.Namespace, target: Mode | None) -> ChangeRequest:
    reason = args.reason or ("revert" if target is None else "")
    return ChangeRequest(target, reason, args.force, changes.default_who())


def _print_gates(gates: list[dict[str, Any]]) -> None:
    for g in gates:
        print(f"  gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} ({g['detail']})")


async def change(settings: Settings, args: argparse.Namespace, target: Mode | None) -> int:
    req = _request(args, target)
    if settings.control_dsn is None:
        return _change_admin(admin_client(args, settings), req, args.json)
    store = await ControlStore.connect(settings.control_dsn)
    try:
        before = ack.live_instances(await store.instances())
        try:
            result = await changes.change_in_store(
                store, req, changes.bounds_from(settings), settings.mode
            )
        except ChangeRefused as exc:
            _err(str(exc))
            return EXIT_REFUSED
        timeout = (
            args.timeout
            if args.timeout is not None
            else max(10.0, 3 * settings.control_poll_interval)
        )
        acks = await ack.wait_for_epoch(store, result.state.epoch, timeout, before)
    finally:
        await store.close()
    if args.json:
        _print_json({**result.to_json(), "acks": acks.to_json()})
    else:
        _print_change(result.to_json())
        _print_acks(acks)
    return 0 if acks.complete else EXIT_NOT_APPLIED


def _print_change(result: dict[str, Any]) -> None:
    if not result["changed"]:
        print(f"already {result['mode']} (epoch {result['epoch']}): nothing changed")
    else:
        forced = " (forced)" if result["forced"] else ""
        print(f"{result['previous']} -> {result['mode']}: epoch {result['epoch']}{forced}")
    if result["gates"] and result["step"] == "backward":
        print("  (going back is never gated; the gates' state is recorded in the audit)")
    _print_gates(result["gates"])


def _print_acks(acks: ack.Acks) -> None:
    print(f"applied ({len(acks.applied)}), last acknowledgement after {acks.seconds:.3f}s:")
    for row in acks.applied:
        print(_instance_line(row, acks.epoch))
    if not acks.applied and not acks.pending and not acks.gone:
        print("warning: no live instance heartbeats; nothing runs this mode yet")
    if acks.pending or acks.gone:
        print(f"NOT applied ({len(acks.pending) + len(acks.gone)}):")
        for row in [*acks.pending, *acks.gone]:
            print(_instance_line(row, acks.epoch))


def _change_admin(client: AdminClient, req: ChangeRequest, as_json: bool) -> int:
    body = {
        "mode": req.target.value if req.target else changes.REVERT,
        "reason": req.reason,
        "force": req.force,
        "who": req.who,
    }
    try:
        code, answer = client.call("POST", "/mode", body)
    except (OSError, orjson.JSONDecodeError) as exc:
        _err(f"admin API at {client.url} unreachable: {exc}")
        return EXIT_NOT_APPLIED
    if code == 409:
        _err(answer.get("error", "refused"))
        return EXIT_REFUSED
    if code != 200:
        _err(f"admin API answered {code}: {answer.get('error', answer)}")
        return EXIT_NOT_APPLIED
    # With a control store behind the instance, this is its answer alone: every
    # instance applies the change from the store (`shadowproxy mode` shows them).
    status, now = client.call("GET", "/mode")
    running = now.get("epoch") if status == 200 else None
    applied = running is not None and running >= answer["epoch"]
    if as_json:
        _print_json({**answer, "instance": now.get("instance"), "applied": applied})
    else:
        _print_change(answer)
        verdict = "applied (1)" if applied else "NOT applied (1)"
        print(f"{verdict}: the instance at {client.url} runs epoch {running}")
    return 0 if applied else EXIT_NOT_APPLIED


# ------------------------------------------------------------------------ history


async def history(settings: Settings, args: argparse.Namespace) -> int:
    if settings.control_dsn is None:
        code, body = admin_client(args, settings).call("GET", "/mode")
        if code != 200:
            _err(f"admin API answered {code}: {body.get('error', body)}")
            return EXIT_NOT_APPLIED
        rows: list[dict[str, Any]] = body.get("history", [])[-args.limit :]
    else:
        store = await ControlStore.connect(settings.control_dsn)
        try:
            rows = await store.history(args.limit)
        finally:
            await store.close()
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        failed = [g["name"] for g in r.get("gates", []) if not g["passed"]]
        gates = f" failed gates: {', '.join(failed)}" if failed else ""
        forced = " FORCED" if r.get("forced") else ""
        print(
            f"{_when(r.get('at'))}  epoch {r['epoch']:<5} {r.get('from_mode') or '-':>11} -> "
            f"{r['to_mode']:<11} by {r['who']}{forced}: {r['reason']}{gates}"
        )
    return 0


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch ``shadowproxy mode [set|revert|history]``."""
    try:
        if args.action == "set":
            return await change(settings, args, Mode(args.target))
        if args.action == "revert":
            return await change(settings, args, None)
        if args.action == "history":
            return await history(settings, args)
        return await show(settings, args)
    except STORE_ERRORS as exc:
        if settings.control_dsn is None:
            url = admin_client(args, settings).url
            _err(f"instance admin API at {url} unreachable: {exc}")
        else:
            _err(f"control store unreachable: {exc.__class__.__name__}: {exc}")
        return EXIT_NOT_APPLIED
