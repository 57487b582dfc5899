"""Progress of a run: a live line with rows/s and ETA on a terminal, log lines otherwise.

Written by hand (a dozen lines) rather than pulling in a progress-bar library.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("comparator.progress")

_BAR = 24


class Progress:
    def __init__(self, stream: TextIO = sys.stderr, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def estimate(self, rows: int) -> None:
        self.total = max(rows, 1)

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        eta = (total - self.done) / rate if rate > 0 else 0.0
        if self.tty:
            filled = int(_BAR * self.done / total) if total else _BAR
            bar = "#" * filled + "-" * (_BAR - filled)
            self.stream.write(
                f"\r[{bar}] {self.done:,}/{total:,} rows  {rate:,.0f} rows/s  ETA {eta:,.0f}s  "
            )
            self.stream.flush()
        else:
            log.info(
                "compared %d of ~%d rows (%.0f rows/s, ETA %.0fs)", self.done, total, rate, eta
            )

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
