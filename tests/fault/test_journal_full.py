"""The journal's disk refuses writes: the mirror manager holds what it could not
journal (queued and rejected units alike), in commit order, and journals it all
once the disk takes writes again.

The manager runs in a child process under a file size limit (RLIMIT_FSIZE:
writes past it fail with EFBIG, as they fail with ENOSPC on a full disk); the
test lifts the limit in the child between the steps.  The journals are then
read back from disk here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from proxy.mirror.journal import Journal

CHILD = r"""
import asyncio, json, os, resource, sys, time
from pathlib import Path

from proxy.mirror.divergence import DivergenceLog
from proxy.mirror.manager import MirrorConfig, MirrorManager
from proxy.mirror.unit import Item, ItemKind, Unit

root = Path(sys.argv[1])


def unit(n):
    item = Item(ItemKind.QUERY, f"INSERT INTO t VALUES ({n})", tags=["INSERT 0 1"])
    return Unit(1, n, False, (), [item], time.time(), order=n)


async def main():
    config = MirrorConfig("127.0.0.1", 1, "nobody", None, "none", 1, 1, 2, 1 << 20, root / "journal")
    manager = MirrorManager(config, DivergenceLog(root / "divergences.jsonl"))
    steps = {}
    manager.journal_units([unit(1)], "connect")
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))  # no record fits any more
    manager.journal_units([unit(2)], "connect")
    manager.journal_units([unit(3), unit(4)], "connect")
    manager.reject(unit(5))
    steps["held"] = manager.status()["journal_held_units"]
    steps["error"] = manager.status()["journal_error"]
    steps["over_bound"] = manager.over_hold_bound
    steps["retry_while_full"] = manager.journal_held()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    steps["retry_after"] = manager.journal_held()
    steps["held_after"] = manager.status()["journal_held_units"]
    steps["error_after"] = manager.status()["journal_error"]
    manager.journal.close()
    manager.rejected.close()
    print(json.dumps(steps))


asyncio.run(main())
"""


def test_units_the_journal_refuses_are_held_in_order_then_journaled(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout.strip().splitlines()[-1])
    assert steps["held"] == 4  # units 2, 3 and 4, and unit 5 for the rejected journal
    assert "File too large" in steps["error"]
    assert steps["over_bound"] is True  # queue_max_units is 2, three units held for the journal
    assert steps["retry_while_full"] is False
    assert steps["retry_after"] is True
    assert steps["held_after"] == 0
    assert steps["error_after"] == ""

    journal = Journal.open_readonly(tmp_path / "journal")
    try:
        assert [u.seq for _, u in journal.read_pending()] == [1, 2, 3, 4]
    finally:
        journal.close()
    rejected = Journal.open_readonly(tmp_path / "journal" / "rejected")
    try:
        assert [u.seq for _, u in rejected.read_pending()] == [5]
    finally:
        rejected.close()
