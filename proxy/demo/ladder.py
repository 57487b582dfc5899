"""The demo's walk up the cutover ladder and back, while the workload runs.

A background thread changes the proxy's mode through its admin API (``POST
/mode`` with the demo's own token), one step at a time: shadow-read, read-new,
write-new (every open session moves its writes to the new store), new-only,
then back down to write-new (the writes new-only journaled reach the old
store) and straight back to dual-write.  Gates are overridden (``force``,
audited): the demo has no comparator run to show them.  Each step waits until
the proxy runs the new epoch.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

STEPS = ("shadow-read", "read-new", "write-new", "new-only", "write-new", "dual-write")


@dataclass
class Step:
    mode: str
    epoch: int
    seconds: float  # from the request to the proxy running it


@dataclass
class LadderWalk:
    admin_url: str
    token: str
    start_after: float  # seconds into the workload
    interval: float  # seconds between steps
    steps: tuple[str, ...] = STEPS
    done: list[Step] = field(default_factory=list)
    error: str = ""
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._walk, name="ladder", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 60.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _walk(self) -> None:
        time.sleep(self.start_after)
        for mode in self.steps:
            try:
                self.done.append(self._step(mode))
            except (OSError, ValueError, urllib.error.URLError) as exc:
                self.error = f"{mode}: {exc}"
                return
            time.sleep(self.interval)

    def _step(self, mode: str) -> Step:
        started = time.monotonic()
        body = json.dumps({"mode": mode, "reason": "shadowproxy demo", "force": True}).encode()
        req = urllib.request.Request(
            f"{self.admin_url}/mode",
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            epoch = int(json.loads(resp.read())["epoch"])
        deadline = started + 10
        while True:
            with urllib.request.urlopen(f"{self.admin_url}/status", timeout=5) as resp:
                status = json.loads(resp.read())
            if status["mode"] == mode and status["epoch"] >= epoch:
                return Step(mode, epoch, time.monotonic() - started)
            if time.monotonic() > deadline:
                raise ValueError(f"the proxy did not apply {mode} within 10 s")
            time.sleep(0.02)
