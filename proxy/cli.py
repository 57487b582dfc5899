"""The ``shadowproxy`` command.

Each subcommand loads the settings once (``proxy.settings``), then hands them to the
component that does the work.  Components are imported lazily so that a config error,
``--version`` or ``mode`` never pays for (or breaks on) the relay's imports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import orjson

from proxy.routing import Mode
from proxy.settings import ConfigError, Settings, load_settings

PROG = "shadowproxy"
EXIT_CONFIG = 2

_T = TypeVar("_T")


def _version() -> str:
    try:
        return metadata.version("shadowproxy")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine on uvloop when it is installed, else on the stock loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _configure_logging(settings: Settings) -> None:
    from proxy.logs import configure

    configure(settings.log_level, settings.log_format)


def _cmd_serve(args: argparse.Namespace) -> int:
    # --log-format beats SHADOW_LOG_FORMAT and the file, like any explicit override.
    overrides = {"log_format": args.log_format} if args.log_format else {}
    settings = load_settings(args.config, **overrides)
    _configure_logging(settings)
    from proxy.control.statefile import StateFileError
    from proxy.mirror.journal import JournalError
    from proxy.relay.server import serve

    try:
        _run(serve(settings))  # Ctrl-C / SIGTERM are handled inside serve()
    except JournalError as exc:  # e.g. another proxy holds the journal
        print(f"{PROG}: journal error: {exc}", file=sys.stderr)
        return 1
    except StateFileError as exc:  # an unreadable state file, or a mode it cannot run
        print(f"{PROG}: state file error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_journal_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from proxy.mirror.journal import Journal, JournalError

    try:
        # Read-only: no lock, so it works beside a running proxy that owns the journal.
        with Journal.open_readonly(settings.journal_dir) as journal:
            status: dict[str, Any] = journal.status()
        to_old = settings.journal_dir / "to-old"  # write-new's mirror to the old store
        if to_old.exists():
            with Journal.open_readonly(to_old) as journal:
                status["to_old"] = journal.status()
    except FileNotFoundError:
        print(f"{PROG}: no journal at {settings.journal_dir}", file=sys.stderr)
        return 1
    except JournalError as exc:
        print(f"{PROG}: journal error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        # default=str: paths and timestamps print as text rather than failing.
        sys.stdout.write(orjson.dumps(status, default=str, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        for key, value in _flatten(status):
            print(f"{key}: {value}")
    return 0


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys, so every line stays ``key: value``."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _cmd_journal_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    from proxy.mirror.connection import MirrorUnavailable
    from proxy.mirror.journal import JournalError
    from proxy.mirror.replay import replay_journal

    try:
        print(_run(replay_journal(settings)))
    except JournalError as exc:  # e.g. a running proxy holds the journal
        print(f"{PROG}: journal error: {exc}", file=sys.stderr)
        return 1
    except MirrorUnavailable as exc:  # what was not replayed stays in the journal
        print(f"{PROG}: replay stopped, the new store is unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_mode(args: argparse.Namespace) -> int:
    from proxy.control.commands import run

    return _run(run(_settings(args), args))


def _cmd_report(args: argparse.Namespace) -> int:
    from proxy.control.report import run

    return _run(run(_settings(args), args))


def _add_mode_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    """``mode`` (show), ``mode set``, ``mode revert``, ``mode history``, and ``report``."""
    remote = argparse.ArgumentParser(add_help=False, parents=[config])
    remote.add_argument(
        "--admin", metavar="URL", help="admin API of an instance (no control store)"
    )
    remote.add_argument("--token", help="admin bearer token (default: SHADOW_ADMIN_TOKEN)")
    remote.add_argument("--json", action="store_true", help="print JSON")
    mode = commands.add_parser("mode", parents=[remote], help="show or change the mode")
    mode.set_defaults(handler=_cmd_mode, action=None)
    actions = mode.add_subparsers(dest="action", metavar="ACTION")
    change = argparse.ArgumentParser(add_help=False, parents=[remote])
    change.add_argument("--force", action="store_true", help="override failed gates (audited)")
    change.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for every instance"
    )
    set_ = actions.add_parser(
        "set", parents=[change], help="move to MODE (one step forward, or back)"
    )
    set_.add_argument(
        "target",
        metavar="MODE",
        choices=[m.value for m in Mode],
        help=", ".join(m.value for m in Mode),
    )
    set_.add_argument("--reason", required=True, help="why (goes to the audit)")
    revert = actions.add_parser("revert", parents=[change], help="back to the previous mode")
    revert.add_argument("--reason", default="", help="why (goes to the audit)")
    hist = actions.add_parser("history", parents=[remote], help="every change (audit)")
    hist.add_argument("--limit", type=int, default=100, help="last N changes")
    report = commands.add_parser("report", parents=[remote], help="readiness report (Markdown)")
    report.set_defaults(handler=_cmd_report)


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import main as demo_main

    return int(demo_main() or 0)


def _parser() -> argparse.ArgumentParser:
    # --config is accepted after the subcommand, where the help text shows it.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")

    parser = argparse.ArgumentParser(prog=PROG, description="Dual-write shadow proxy.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", parents=[config], help="run the proxy")
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text (humans) or JSON (log shippers); overrides SHADOW_LOG_FORMAT",
    )
    serve.set_defaults(handler=_cmd_serve)
    _add_mode_commands(commands, config)
    commands.add_parser("demo", help="run a local demonstration").set_defaults(handler=_cmd_demo)
    # Dispatched in main() before parsing; listed here for --help.
    commands.add_parser("compare", help="compare the two stores row by row", add_help=False)

    journal = commands.add_parser("journal", help="inspect or replay the mirror journal")
    journal_commands = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = journal_commands.add_parser("status", parents=[config], help="journal backlog")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_journal_status)
    journal_commands.add_parser(
        "replay", parents=[config], help="apply journaled units to the mirror store"
    ).set_defaults(handler=_cmd_journal_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # the demo parses its own options
        from proxy.demo import main as demo_main

        return int(demo_main(argv[1:]) or 0)
    if argv[:1] == ["compare"]:  # the comparator owns its options
        from comparator.cli import main as compare_main

        return compare_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C before serve() installed its own handlers
        return 130


if __name__ == "__main__":
    sys.exit(main())
