"""Mode-flip latency: from `mode set` to the last of N instances acknowledging.

Starts N ``shadowproxy serve`` processes (default 3) sharing one control
database, optionally drives pgbench -S through each of them, then flips the
fleet between dual-write and old-only F times (default 50) with the same code
path as ``shadowproxy mode set`` (judge, write + NOTIFY, wait for every live
instance's heartbeat to carry the new epoch), and prints p50/p99/max.

Instances keep the default poll interval (2 s): the numbers measure the
LISTEN/NOTIFY path, not polling.

    .venv/bin/python tests/bench/modeflip.py [--instances 3] [--flips 50] [--no-load]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy.control import acks, changes  # noqa: E402
from proxy.control.store import ControlStore  # noqa: E402
from proxy.routing import Mode  # noqa: E402
from proxy.settings import parse_dsn  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
SHADOWPROXY = str(Path(sys.executable).parent / "shadowproxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def psql(db: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql],
        check=True,
        capture_output=True,
    )


def start_proxy(
    workdir: Path, old: str, new: str, control: str
) -> tuple[subprocess.Popen[bytes], int]:
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(
        SHADOW_LISTEN=f"127.0.0.1:{port}",
        SHADOW_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        SHADOW_OLD_DSN=f"{PG}/{old}",
        SHADOW_NEW_DSN=f"{PG}/{new}",
        SHADOW_CONTROL_DSN=f"{PG}/{control}",
        SHADOW_MODE="dual-write",
        SHADOW_JOURNAL_DIR=str(workdir / f"journal-{port}"),
        SHADOW_DIVERGENCE_LOG=str(workdir / f"divergence-{port}.jsonl"),
        SHADOW_STATE_FILE=str(workdir / f"state-{port}.json"),
        SHADOW_LOG_LEVEL="WARNING",
    )
    log = (workdir / f"proxy-{port}.log").open("ab")
    proc = subprocess.Popen([SHADOWPROXY, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"proxy on {port} did not start; see {workdir}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def flip(control: str, n_instances: int, flips: int) -> list[float]:
    store = await ControlStore.connect(parse_dsn(f"{PG}/{control}"))
    bounds = changes.Bounds()
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while len(acks.live_instances(await store.instances())) < n_instances:
            if time.monotonic() > deadline:
                raise SystemExit("instances did not all heartbeat")
            await asyncio.sleep(0.1)
        for i in range(flips):
            target = Mode.OLD_ONLY if i % 2 == 0 else Mode.DUAL_WRITE
            req = changes.ChangeRequest(target, f"modeflip bench {i}", False, "bench")
            started = time.monotonic()
            result = await changes.change_in_store(store, req, bounds, Mode.DUAL_WRITE)
            done = await acks.wait_for_epoch(store, result.state.epoch, 10.0)
            elapsed = time.monotonic() - started
            if not done.complete or len(done.applied) != n_instances:
                raise SystemExit(f"flip {i}: not acknowledged by all: {done.to_json()}")
            samples.append(elapsed)
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--no-load", action="store_true", help="no pgbench traffic during flips")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    old, new, control = f"sp_bench_old_{tag}", f"sp_bench_new_{tag}", f"sp_bench_ctl_{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="sp-modeflip-"))
    procs: list[subprocess.Popen[bytes]] = []
    load: list[subprocess.Popen[bytes]] = []
    for db in (old, new, control):
        psql("postgres", f"CREATE DATABASE {db}")
    try:
        if not args.no_load:
            for db in (old, new):
                subprocess.run(
                    ["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", db],
                    check=True,
                    capture_output=True,
                )
        ports = []
        for _ in range(args.instances):
            proc, port = start_proxy(workdir, old, new, control)
            procs.append(proc)
            ports.append(port)
        if not args.no_load:
            for port in ports:
                cmd = ["pgbench", "-S", "-n", "-c", "2", "-j", "1", "-T", "600"]
                cmd += ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", old]
                load.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            time.sleep(1)
        samples = asyncio.run(flip(control, args.instances, args.flips))
        for p in load:
            if p.poll() is not None:
                raise SystemExit("a pgbench client died during the flips")
    finally:
        for p in load:
            p.send_signal(signal.SIGINT)
        for p in load:
            p.wait(timeout=30)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for db in (old, new, control):
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)

    ms = [s * 1000 for s in samples]
    print(
        f"mode flips: {len(ms)} (dual-write <-> old-only), {args.instances} instances, "
        f"load: {'none' if args.no_load else 'pgbench -S -c 2 per instance'}"
    )
    print("| p50 (ms) | p99 (ms) | max (ms) | mean (ms) | target p99 |")
    print("|---:|---:|---:|---:|---|")
    p99 = percentile(ms, 0.99)
    print(
        f"| {percentile(ms, 0.5):.1f} | {p99:.1f} | {max(ms):.1f} | {statistics.mean(ms):.1f} | "
        f"< 1000 ms: {'met' if p99 < 1000 else 'NOT met'} |"
    )
    return 0 if p99 < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
