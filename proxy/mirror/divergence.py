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

    def record(self, kind: str, **fields: Any) -> None:
        event = {"ts": time.time(), "source": self.source, "kind": kind, **fields}
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        os.write(self._fd, line)
        os.fsync(self._fd)  # rare, and worth keeping across a crash
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

    def close(self) -> None:
        os.close(self._fd)
