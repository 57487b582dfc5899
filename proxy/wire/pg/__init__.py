"""Sans-IO PostgreSQL wire protocol codec: bytes in, events out.

No asyncio, sockets, clocks, logging or metrics here (a test checks it).
"""

from proxy.wire.pg import _events as events
from proxy.wire.pg import _messages as messages
from proxy.wire.pg._backend import (
    BOUNDARIES,
    OUTCOMES,
    TRACKED,
    BackendScanner,
    command_tag,
    error_fields,
    split_messages,
)
from proxy.wire.pg._errors import ProtocolError
from proxy.wire.pg._frames import FrameChecker
from proxy.wire.pg._frontend import FrontendParser
from proxy.wire.pg._tracker import Completion, Request, Tracker

__all__ = [
    "BOUNDARIES",
    "OUTCOMES",
    "TRACKED",
    "BackendScanner",
    "Completion",
    "FrontendParser",
    "FrameChecker",
    "ProtocolError",
    "Request",
    "Tracker",
    "command_tag",
    "error_fields",
    "events",
    "messages",
    "split_messages",
]
