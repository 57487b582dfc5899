"""Key and row values as JSON (checkpoints, reports, the divergence log).

``encode`` keeps the Python type so a checkpointed key can be sent back to a database
exactly; ``plain`` is the lossy, readable form used in reports and logs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any


def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str | float):
        return value
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": bytes(value).hex()}
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"da": value.isoformat()}
    if isinstance(value, dt.time):
        return {"t": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"td": value // dt.timedelta(microseconds=1)}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    return {"j": value}  # JSON documents and anything the drivers return as containers


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "d": Decimal,
    "b": bytes.fromhex,
    "dt": dt.datetime.fromisoformat,
    "da": dt.date.fromisoformat,
    "t": dt.time.fromisoformat,
    "td": lambda v: dt.timedelta(microseconds=v),
    "u": uuid.UUID,
    "j": lambda v: v,
}


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        ((tag, inner),) = value.items()
        return _DECODERS[tag](inner)
    return value


def encode_key(key: tuple[Any, ...]) -> list[Any]:
    return [encode(v) for v in key]


def decode_key(key: list[Any]) -> tuple[Any, ...]:
    return tuple(decode(v) for v in key)


def plain(value: Any) -> Any:
    """A readable JSON value: numbers and strings as they are, the rest as text."""
    if value is None or isinstance(value, bool | int | str | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return value
    return str(value)
