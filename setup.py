"""Compiles the relay's hot path with mypyc; everything else is in pyproject.toml.

Every message of a mirrored session passes through these modules (the wire
codec, the session, shadow reads, the recorder, value pinning, the mirror
connection, its session queue and the manager that orders their commits, the
classifier, the hot-path metrics); compiled, the proxy spends
about a sixth less CPU per mirrored transaction (README, "Set-up" and
"Benchmark").  They stay plain, type-checked Python: with SHADOWPROXY_PURE=1
nothing is compiled and the same code runs interpreted.
"""

import os

from setuptools import setup

HOT_PATH = [
    "proxy/classify.py",
    "proxy/metrics.py",
    "proxy/wire/pg/_backend.py",
    "proxy/wire/pg/_events.py",
    "proxy/wire/pg/_frames.py",
    "proxy/wire/pg/_frontend.py",
    "proxy/wire/pg/_messages.py",
    "proxy/wire/pg/_rows.py",
    "proxy/wire/pg/_tracker.py",
    "proxy/relay/answers.py",
    "proxy/relay/client.py",
    "proxy/relay/lockstep.py",
    "proxy/relay/reads.py",
    "proxy/relay/shadow.py",
    "proxy/relay/shadow_link.py",
    "proxy/relay/switch.py",
    "proxy/relay/txn_rules.py",
    "proxy/mirror/activity.py",
    "proxy/mirror/connection.py",
    "proxy/mirror/manager.py",
    "proxy/mirror/pinning.py",
    "proxy/mirror/recorder.py",
    "proxy/mirror/session.py",
    "proxy/mirror/unit.py",
]

ext_modules = []
if os.environ.get("SHADOWPROXY_PURE") != "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(HOT_PATH, opt_level="3", group_name="proxy._hot")

setup(ext_modules=ext_modules)
