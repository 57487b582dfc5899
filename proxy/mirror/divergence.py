"""The divergence log: one JSON line per divergence, shared with the comparator.

Each line carries the kind, a literal-free statement fingerprint, the table
when known, what each store answered and the session; never a literal value
from a query.  Every event is also counted in metrics and kept in a small
in-memory tail for /status.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import orjson

from proxy import metrics

log = logging.getLogger(__name__)

# A field named like a LogRecord attribute ("name", "args"...) cannot be an extra.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class DivergenceLog:
    def __init__(self, path: Path, source: str = "proxy") -> None:
        self.path = path
        self.source = source
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)
        # Lines the file did not take (disk full): written before the next one.
        self._unwritten: list[bytes] = []

    def record(self, kind: str, **fields: Any) -> None:
        event = {"ts": time.time(), "source": self.source, "kind": kind, **fields}
        self._unwritten.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        self._write_pending()
        metrics.DIVERGENCES.labels(kind).inc()
        self.counts[kind] += 1
        self.recent.append(event)
        # Its own record, with the event's fields as structured extras (JSON logs);
        # the new store's error text stays in the divergence log only.
        shown = {k: v for k, v in fields.items() if k != "new_error"}
        extra = {f"divergence_{k}" if k in _RECORD_ATTRS else k: v for k, v in shown.items()}
        log.warning(
            "divergence kind=%s %s",
            kind,
            shown,
            extra={**extra, "event": "divergence", "kind": kind, "source": self.source},
        )

    def _write_pending(self) -> None:
        """Append the lines not written yet; a full disk keeps them for the next
        event (the metric and the log line below report the event meanwhile)."""
        data = b"".join(self._unwritten)
        try:
            written = os.write(self._fd, data)
            os.fsync(self._fd)  # rare, and worth keeping across a crash
        except OSError as exc:
            metrics.DIVERGENCE_LOG_ERRORS.inc()
            log.error("divergence log %s cannot be written: %s", self.path, exc)
            return
        if written == len(data):
            self._unwritten = []
            return
        # A short write (a file size limit): the rest goes with the next event.
        metrics.DIVERGENCE_LOG_ERRORS.inc()
        self._unwritten = [data[written:]]

    def close(self) -> None:
        if self._unwritten:
            self._write_pending()
        os.close(self._fd)
