"""Log output: one JSON object per line for log shippers, or one text line for humans.

``SHADOW_LOG_FORMAT=json`` (or ``serve --log-format json``) makes every record a
JSON object with ``ts``, ``level``, ``logger`` and ``message``, then the context
fields ``session``, ``mode``, ``epoch`` and ``fingerprint`` when the record has
them, then any other ``extra=`` field (a divergence record carries its kind,
tables and both stores' answers).  Callers pass context through the standard
``extra=`` argument; ``context()`` builds that mapping and drops unset values so
a record never claims ``"session": null``.

Nothing here adds literals: a fingerprint is already literal-free, and the
formatter only serialises what the caller chose to attach.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

# The fields an SRE filters on first; they lead every JSON record that has them.
CONTEXT_FIELDS = ("session", "mode", "epoch", "fingerprint")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def context(
    session: int | str | None = None,
    mode: str | None = None,
    epoch: int | None = None,
    fingerprint: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An ``extra=`` mapping without the unset values."""
    given = {"session": session, "mode": mode, "epoch": epoch, "fingerprint": fingerprint}
    given.update(fields)
    return {k: v for k, v in given.items() if v is not None}


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, context fields first."""
    extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    ordered = {k: extras.pop(k) for k in CONTEXT_FIELDS if k in extras}
    ordered.update(sorted(extras.items()))
    return ordered


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            out.setdefault(key, value)  # an extra never overwrites the four base fields
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # default=str: paths, enums and exceptions print as text rather than failing.
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, followed by the context fields the record carries."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = record_extras(record)
        tail = " ".join(f"{k}={extras[k]}" for k in CONTEXT_FIELDS if k in extras)
        if not tail:
            return line
        # Keep a traceback (if any) below the first line.
        first, sep, rest = line.partition("\n")
        return f"{first} [{tail}]{sep}{rest}"


class ProcessContext(logging.Filter):
    """Stamps every record with the instance's mode and epoch, unless it has its own.

    The server binds a callable once (``bind_process_context``); it is read at
    each record, so a mode change shows in the very next log line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.source: Callable[[], dict[str, Any]] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.source is not None:
            for key, value in self.source().items():
                if value is not None and not hasattr(record, key):
                    setattr(record, key, value)
        return True


_PROCESS_CONTEXT = ProcessContext()


def bind_process_context(source: Callable[[], dict[str, Any]] | None) -> None:
    """``source()`` returns e.g. ``{"mode": "dual-write", "epoch": 3}``; None unbinds."""
    _PROCESS_CONTEXT.source = source


def configure(level: str, fmt: LogFormat) -> None:
    """Install one stderr handler with the chosen format on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_PROCESS_CONTEXT)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
