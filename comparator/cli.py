"""``shadowproxy compare``: prove the two stores hold the same rows, or list the differences.

Exit status: 0 identical, 1 differences found, 2 error (configuration, connection).
The stores come from ``--old``/``--new`` URLs, else from the proxy's settings
(``SHADOW_OLD_DSN``/``SHADOW_NEW_DSN``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from comparator import metrics
from comparator.checkpoint import (
    CheckpointMismatch,
    ControlStore,
    FileStore,
    SegmentStore,
    ensure_control_schema,
)
from comparator.checksum import Tuning
from comparator.dsn import StoreDsn, parse_store_dsn
from comparator.progress import Progress
from comparator.report import RunReport
from comparator.run import CompareOptions, Comparison

PROG = "shadowproxy compare"
EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2

log = logging.getLogger("comparator")


class UsageError(Exception):
    """A configuration problem, printed as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Prove the two stores hold the same rows, or list the differences. "
        "Exit status: 0 identical, 1 differences, 2 error.",
    )
    stores = p.add_argument_group("stores")
    stores.add_argument("--old", metavar="DSN", help="old store URL (default SHADOW_OLD_DSN)")
    stores.add_argument("--new", metavar="DSN", help="new store URL (default SHADOW_NEW_DSN)")
    stores.add_argument("--config", type=Path, metavar="FILE", help="proxy TOML settings file")
    stores.add_argument(
        "--authoritative", choices=("old", "new"), default="old", help="source of truth"
    )
    what = p.add_argument_group("what to compare")
    what.add_argument(
        "--schema-name", help="PostgreSQL schema (default public); MySQL: the database"
    )
    what.add_argument("--tables", action="append", metavar="NAMES", help="tables (globs, comma)")
    what.add_argument("--exclude", action="append", metavar="NAMES", help="tables to skip")
    what.add_argument("--schema", action="store_true", help="check schema parity only")
    tune = p.add_argument_group("tuning")
    tune.add_argument("--segment-rows", type=int, default=Tuning.segment_rows)
    tune.add_argument("--bisection-factor", type=int, default=Tuning.bisection_factor)
    tune.add_argument("--diff-threshold", type=int, default=Tuning.diff_threshold)
    tune.add_argument("--settle-seconds", type=float, default=3.0)
    tune.add_argument("--workers", type=int, default=2, help="concurrent segment workers")
    tune.add_argument("--max-rows-per-second", type=float, metavar="N", help="throttle")
    tune.add_argument("--proxy-admin", metavar="URL", help="proxy admin http://host:port")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--samples", type=int, default=10, help="sample keys per kind")
    out.add_argument("--divergence-log", type=Path, metavar="PATH")
    out.add_argument("--serve-metrics", metavar="HOST:PORT", help="serve /metrics after the run")
    out.add_argument("--serve-seconds", type=float, help="stop serving metrics after N s")
    out.add_argument("--metrics-file", type=Path, metavar="PATH", help="textfile/Pushgateway")
    resume = p.add_argument_group("resume and workers")
    resume.add_argument("--checkpoint", type=Path, metavar="PATH", help="local progress file")
    resume.add_argument("--resume", action="store_true", help="continue an interrupted run")
    resume.add_argument("--control", metavar="DSN", help="control database (SHADOW_CONTROL_DSN)")
    resume.add_argument("--run-id", help="shared run id (control database)")
    resume.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    fix = p.add_argument_group("repair")
    fix.add_argument("--repair", action="store_true", help="repair the differences (dry run)")
    fix.add_argument("--apply", action="store_true", help="with --repair: write the changes")
    fix.add_argument("--undo", type=Path, metavar="FILE", help="roll back a repair")
    fix.add_argument("--undo-file", type=Path, metavar="PATH", help="where --apply writes undo")
    return p


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


# --------------------------------------------------------------------------- settings


class Resolved:
    """Stores and paths after applying flags over the proxy's settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        settings = _load_settings(args)
        self.old = _dsn(args.old, settings, "old_dsn", "--old")
        self.new = _dsn(args.new, settings, "new_dsn", "--new")
        control = args.control or _setting_url(settings, "control_dsn")
        self.control = _parse(control, "--control") if control else None
        if self.control is not None and self.control.engine != "postgresql":
            raise UsageError("--control: the control database must be PostgreSQL")
        default_log = getattr(settings, "divergence_log", None) or Path(
            "shadowproxy-divergence.jsonl"
        )
        self.divergence_log: Path = args.divergence_log or default_log


def _load_settings(args: argparse.Namespace) -> Any:
    from proxy.settings import ConfigError, load_settings

    if args.old and args.new and args.control and args.divergence_log and not args.config:
        return None
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        if args.config is not None or not (args.old and args.new):
            raise UsageError(f"config error: {exc}") from None
        return None  # flags cover the stores; the environment is not needed


def _setting_url(settings: Any, name: str) -> str | None:
    dsn = getattr(settings, name, None) if settings is not None else None
    if dsn is None:
        return None
    from urllib.parse import quote

    auth = quote(dsn.user, safe="")
    if dsn.password is not None:
        auth += ":" + quote(dsn.password, safe="")
    host = f"[{dsn.host}]" if ":" in dsn.host else dsn.host
    return f"{dsn.scheme}://{auth}@{host}:{dsn.port}/{quote(dsn.database, safe='')}"


def _dsn(flag: str | None, settings: Any, name: str, option: str) -> StoreDsn:
    url = flag or _setting_url(settings, name)
    if not url:
        env = f"SHADOW_{name.upper()}"
        raise UsageError(f"no {option.lstrip('-')} store: pass {option} URL or set {env}")
    return _parse(url, option)


def _parse(url: str, option: str) -> StoreDsn:
    try:
        return parse_store_dsn(url)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


# ---------------------------------------------------------------------------- actions


def _options(args: argparse.Namespace, r: Resolved) -> CompareOptions:
    for name in ("segment_rows", "bisection_factor", "diff_threshold", "workers"):
        if getattr(args, name) < 1 or (name == "bisection_factor" and args.bisection_factor < 2):
            raise UsageError(f"--{name.replace('_', '-')} is too small")
    return CompareOptions(
        old=r.old,
        new=r.new,
        schema_name=args.schema_name,
        tables=_names(args.tables) or None,
        exclude=_names(args.exclude),
        tuning=Tuning(args.segment_rows, args.bisection_factor, args.diff_threshold),
        settle_seconds=max(0.0, args.settle_seconds),
        authoritative=args.authoritative,
        workers=args.workers,
        max_rows_per_second=args.max_rows_per_second,
        proxy_admin=args.proxy_admin,
        worker_only=args.worker_only,
    )


def _store(args: argparse.Namespace, r: Resolved, run_id: str | None) -> SegmentStore:
    if r.control is not None and run_id is not None:
        return ControlStore(r.control, run_id, args.workers + 2)
    if args.checkpoint is not None:
        return FileStore(args.checkpoint, resume=args.resume)
    if args.resume:
        raise UsageError("--resume needs --checkpoint PATH or a control database")
    return SegmentStore()


def _spawn_workers(argv: list[str], run_id: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Extra worker processes of a shared run (they claim segments, report nothing)."""
    cmd = [sys.executable, "-m", "comparator.cli", *argv]
    cmd += ["--run-id", run_id, "--worker-only", "--workers", "1"]
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(count)]


async def _compare(args: argparse.Namespace, r: Resolved, argv: list[str]) -> RunReport:
    opts = _options(args, r)
    run_id = args.run_id
    if r.control is not None and run_id is None:
        if args.resume:
            raise UsageError("--resume with a control database needs --run-id")
        run_id = uuid.uuid4().hex[:12]
        log.info("run id %s", run_id)
    store = _store(args, r, run_id)
    children: list[subprocess.Popen[bytes]] = []
    if r.control is not None and run_id and args.workers > 1 and not args.worker_only:
        children = _spawn_workers(argv, run_id, args.workers - 1)
        opts.workers = 1
    progress = Progress() if not args.worker_only else None
    try:
        await store.open(opts.fingerprint())
        comparison = Comparison(opts, store, progress.advance if progress else lambda n: None)
        report = await comparison.run(progress.estimate if progress else lambda n: None)
    finally:
        if progress is not None:
            progress.close()
        await store.close()
        for child in children:
            await asyncio.to_thread(child.wait)
    report.run_id = run_id
    return report


async def _record_run(control: StoreDsn, report: RunReport) -> None:
    """A summary row in the control database (cutover gates read it)."""
    import asyncpg

    conn = await asyncpg.connect(
        host=control.host,
        port=control.port,
        user=control.user,
        password=control.password,
        database=control.database,
    )
    try:
        await ensure_control_schema(conn)
        await conn.execute(
            "INSERT INTO shadowproxy.compare_runs "
            "(started_at, finished_at, identical, divergent_rows, tables, report) "
            "VALUES (to_timestamp($1), to_timestamp($2), $3, $4, $5, $6::jsonb)",
            report.started_at,
            report.finished_at,
            report.identical,
            report.divergent_rows,
            len(report.tables),
            orjson.dumps(report.to_json(samples=0), default=str).decode(),
        )
    finally:
        await conn.close()


def _log_divergences(path: Path, report: RunReport) -> None:
    from comparator.divergences import log_divergences

    log_divergences(path, report)


async def _repair(args: argparse.Namespace, r: Resolved, report: RunReport) -> dict[str, Any]:
    try:
        from comparator.repair import repair
    except ImportError as exc:
        raise UsageError(f"--repair is not available: {exc}") from None
    auth, target = (r.old, r.new) if args.authoritative == "old" else (r.new, r.old)
    diffs = [t.diff for t in report.tables if t.diff is not None and t.divergent]
    result = await repair(auth, target, diffs, args.apply, _undo_path(args))
    _emit_text(result.render())
    return dict(result.to_json())


def _undo_path(args: argparse.Namespace) -> Path:
    if args.undo_file is not None:
        return Path(args.undo_file)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path.cwd() / f"shadowproxy-undo-{stamp}.jsonl"


_JSON_MODE = False


def _emit_text(text: str) -> None:
    # With --json, stdout carries only the JSON document; human text goes to stderr.
    stream = sys.stderr if _JSON_MODE else sys.stdout
    stream.write(text if text.endswith("\n") else text + "\n")


def _emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _main(args: argparse.Namespace, argv: list[str]) -> int:
    r = Resolved(args)
    if args.undo is not None:
        return await _run_undo(args, r)
    if args.schema:
        return await _run_schema(args, r)
    started = time.time()
    try:
        report = await _compare(args, r, argv)
    except BaseException:
        metrics.record_run(None, time.time() - started, time.time())
        _export_metrics(args)
        raise
    if args.worker_only:
        return EXIT_IDENTICAL
    metrics.record_run(report, report.elapsed, report.finished_at)
    _log_divergences(r.divergence_log, report)
    if r.control is not None:
        await _record_run(r.control, report)
    doc = report.to_json(args.samples)
    if not args.json:
        _emit_text(report.render(min(args.samples, 5)))
    if args.repair:
        doc["repair"] = await _repair(args, r, report)
    if args.json:
        _emit_json(doc)
    _export_metrics(args)
    return EXIT_IDENTICAL if report.identical else EXIT_DIFFERENT


async def _run_undo(args: argparse.Namespace, r: Resolved) -> int:
    try:
        from comparator.repair import undo
    except ImportError as exc:
        raise UsageError(f"--undo is not available: {exc}") from None
    target = r.new if args.authoritative == "old" else r.old
    result = await undo(target, args.undo)
    if args.json:
        _emit_json(dict(result.to_json()))
    else:
        _emit_text(result.render())
    return EXIT_IDENTICAL


async def _run_schema(args: argparse.Namespace, r: Resolved) -> int:
    try:
        from comparator.schema import compare_schema
    except ImportError as exc:
        raise UsageError(f"--schema is not available: {exc}") from None
    result = await compare_schema(
        r.old, r.new, args.schema_name, _names(args.tables) or None, _names(args.exclude)
    )
    if args.json:
        _emit_json(dict(result.to_json()))
    else:
        _emit_text(result.render())
    return EXIT_IDENTICAL if result.identical else EXIT_DIFFERENT


def _export_metrics(args: argparse.Namespace) -> None:
    if args.metrics_file is not None:
        metrics.write_textfile(args.metrics_file)


def _start_metrics(args: argparse.Namespace) -> Any:
    """Serve /metrics from now on (scrapes during the run see the last run's values)."""
    from prometheus_client import start_http_server

    from proxy.settings import HostPort

    try:
        where = HostPort.parse(args.serve_metrics)
    except ValueError as exc:
        raise UsageError(f"--serve-metrics: {exc}") from None
    server, thread = start_http_server(where.port, where.host, registry=metrics.REGISTRY)
    log.info("serving comparator metrics on http://%s/metrics", where)
    return server, thread


def _keep_serving(args: argparse.Namespace, server: Any) -> None:
    """Keep /metrics up until Ctrl-C (or for --serve-seconds)."""
    httpd, thread = server
    try:
        if args.serve_seconds is not None:
            time.sleep(args.serve_seconds)
        else:
            while True:
                time.sleep(3600)
    finally:
        httpd.shutdown()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    global _JSON_MODE
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    _JSON_MODE = bool(args.json)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        server = _start_metrics(args) if args.serve_metrics else None
        code = _run(_main(args, argv))
        if server is not None:
            _keep_serving(args, server)
        return code
    except KeyboardInterrupt:
        return 130
    except (UsageError, CheckpointMismatch, LookupError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # connection refused, auth failure, SQL error: one line
        print(f"{PROG}: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


if __name__ == "__main__":
    sys.exit(main())
