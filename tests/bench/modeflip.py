"""Mode-flip latency: from `mode set` to the last of N instances acknowledging.

Starts N ``shadowproxy serve`` processes (default 3) sharing one control
database, optionally drives pgbench through each of them (-S, or tpcb-like
with ``--load tpcb``), then flips the fleet between two modes (default
dual-write and old-only; ``--modes read-new,write-new`` moves every session's
writes between the stores) F times (default 50) with the same code path as
``shadowproxy mode set`` (judge, write + NOTIFY, wait for every live
instance's heartbeat to carry the new epoch), and prints p50/p99/max.  With
writes moving, it also prints how long sessions waited for their move
(``shadowproxy_authority_switch_seconds``, from the instances' /metrics) and
checks that no pgbench client failed.

Instances keep the default poll interval (2 s): the numbers measure the
LISTEN/NOTIFY path, not polling.

    .venv/bin/python tests/bench/modeflip.py [--instances 3] [--flips 50] [--no-load]
        [--modes A,B] [--load select|tpcb]
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
) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin = free_port(), free_port()
    while admin == port:  # each probe socket is closed: the same port may come twice
        admin = free_port()
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
                return proc, port, admin
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"proxy on {port} did not start; see {workdir}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def flip(control: str, n_instances: int, flips: int, modes: tuple[Mode, Mode]) -> list[float]:
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
            target = modes[1] if i % 2 == 0 else modes[0]
            req = changes.ChangeRequest(target, f"modeflip bench {i}", True, "bench")
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


async def flip_to(control: str, n_instances: int, mode: Mode) -> None:
    """Up the ladder from dual-write to ``mode`` one forced step at a time."""
    store = await ControlStore.connect(parse_dsn(f"{PG}/{control}"))
    try:
        while len(acks.live_instances(await store.instances())) < n_instances:
            await asyncio.sleep(0.1)
        for step in list(Mode)[Mode.DUAL_WRITE.index + 1 : mode.index + 1]:
            req = changes.ChangeRequest(step, "modeflip bench: walk up", True, "bench")
            result = await changes.change_in_store(store, req, changes.Bounds(), Mode.DUAL_WRITE)
            await acks.wait_for_epoch(store, result.state.epoch, 10.0)
    finally:
        await store.close()


def switch_pauses(admins: list[int]) -> tuple[int, float, float, float] | None:
    """(moves, total seconds, p50 bound, p99 bound) over every instance's histogram."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    name = "shadowproxy_authority_switch_seconds"
    for admin in admins:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + "_bucket"):
                    le = line.split('le="')[1].split('"')[0]
                    bound = float("inf") if le == "+Inf" else float(le)
                    buckets[bound] = buckets.get(bound, 0) + float(line.split()[-1])
                elif line.startswith(name + "_count"):
                    count += float(line.split()[-1])
                elif line.startswith(name + "_sum"):
                    total += float(line.split()[-1])
    if not count:
        return None

    def bound(q: float) -> float:
        return next(b for b, n in sorted(buckets.items()) if n >= q * count)

    return int(count), total, bound(0.5), bound(0.99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--no-load", action="store_true", help="no pgbench traffic during flips")
    parser.add_argument("--modes", default="dual-write,old-only", help="the two modes flipped")
    parser.add_argument("--load", choices=("select", "tpcb"), default="select")
    args = parser.parse_args()
    first, second = (Mode(m) for m in args.modes.split(","))

    tag = uuid.uuid4().hex[:8]
    old, new, control = f"sp_bench_old_{tag}", f"sp_bench_new_{tag}", f"sp_bench_ctl_{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="sp-modeflip-"))
    procs: list[subprocess.Popen[bytes]] = []
    load: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []
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
        ports, admins = [], []
        for _ in range(args.instances):
            proc, port, admin = start_proxy(workdir, old, new, control)
            procs.append(proc)
            ports.append(port)
            admins.append(admin)
        if not args.no_load:
            for port in ports:
                cmd = ["pgbench", "-n", "-c", "2", "-j", "1", "-T", "600"]
                cmd += ["-S"] if args.load == "select" else []
                cmd += ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", old]
                out = (workdir / f"pgbench-{port}.out").open("wb")
                outputs.append(out.name)
                load.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
            time.sleep(1)
        if first is not Mode.DUAL_WRITE:  # walk up to the first mode (forced, audited)
            asyncio.run(flip_to(control, args.instances, first))
        samples = asyncio.run(flip(control, args.instances, args.flips, (first, second)))
        for p in load:
            if p.poll() is not None:
                raise SystemExit("a pgbench client died during the flips")
        pauses = switch_pauses(admins)
    finally:
        for p in load:
            p.send_signal(signal.SIGINT)
        for p in load:
            p.wait(timeout=30)
        texts = [Path(name).read_text() for name in outputs]
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

    for text in texts:
        if "aborted" in text or "ERROR" in text:
            print(text)
            raise SystemExit("pgbench reported failed transactions")
    ms = [s * 1000 for s in samples]
    kind = "-S" if args.load == "select" else "tpcb-like"
    print(
        f"mode flips: {len(ms)} ({first.value} <-> {second.value}), {args.instances} instances, "
        f"load: {'none' if args.no_load else f'pgbench {kind} -c 2 per instance'}"
    )
    if pauses is not None:
        count, total, p50, p99 = pauses
        if count:
            print(
                f"sessions moved: {count}, wait per move mean {total / count * 1000:.1f} ms,"
                f" p50 <= {p50 * 1000:.1f} ms, p99 <= {p99 * 1000:.1f} ms (histogram bounds)"
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
