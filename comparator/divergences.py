"""Confirmed divergences into the divergence log shared with the proxy.

One line per row: kind ``missing`` / ``extra`` / ``mismatched``, the table, the key
values (row keys, never other column values) and, for ``mismatched``, the names of the
differing columns.  A keyless table has no key: its rows are identified by a digest.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from comparator.codec import plain
from comparator.report import KINDS, RunReport

log = logging.getLogger(__name__)


def log_divergences(path: Path, report: RunReport) -> int:
    """Append every confirmed divergence of ``report``; returns how many were written."""
    if report.divergent_rows == 0:
        return 0
    from proxy.mirror.divergence import DivergenceLog

    divergence_log = DivergenceLog(path, source="comparator")
    # The log warns once per event; a comparison can confirm thousands: one line here.
    event_logger = logging.getLogger("proxy.mirror.divergence")
    level = event_logger.level
    event_logger.setLevel(logging.ERROR)
    written = 0
    try:
        for t in report.tables:
            d = t.diff
            if d is None:
                continue
            table = f"{t.schema}.{t.name}"
            for kind in KINDS:
                for key in getattr(d, kind):
                    fields: dict[str, object] = {"table": table, "store": report.authoritative}
                    if t.keyless:
                        fields["keyless"] = True
                        fields["row_digest"] = hashlib.md5(repr(key).encode()).hexdigest()
                    else:
                        fields["key"] = [plain(v) for v in key]
                        fields["key_columns"] = d.key_columns
                    if kind == "mismatched":
                        fields["columns"] = d.mismatched_columns.get(key, [])
                    divergence_log.record(kind, **fields)
                    written += 1
    finally:
        divergence_log.close()
        event_logger.setLevel(level)
    log.warning("%d divergent rows written to %s", written, path)
    return written
