"""The connection from one client session to the authoritative store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from proxy.wire.pg._messages import TERMINATE

# Why a client's socket is not read (bits: each cause resumes only its own).
HELD_BACK: Final = 1  # lock-step holds many of its requests (lockstep.py)
STORE_FULL: Final = 2  # the authoritative store's socket takes no more (below)
JOURNAL_STALLED: Final = 4  # the journal cannot be written and too many units are held

if TYPE_CHECKING:
    from proxy.relay.client import ClientSession


class UpstreamProtocol(asyncio.Protocol):
    """Hands every chunk to the client session; mirrors flow control back to it."""

    __slots__ = ("session", "transport", "data_received", "keep")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.keep: object = None  # a socket taken over from a stream (switch.py)
        # Every chunk goes straight to the session: one Python call less per
        # chunk on the hot path (the event loop looks this attribute up once).
        self.data_received = session.upstream_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.session.upstream_lost(exc)

    def detach(self) -> None:
        """The session moved to another store: this connection only closes now.
        (A new protocol, not a new data_received: the loop caches the method.)"""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.set_protocol(asyncio.Protocol())
            transport.write(TERMINATE)
            transport.close()

    # The store cannot take more: stop reading the client until it drains.
    def pause_writing(self) -> None:
        self.session.pause_client_reading(STORE_FULL)

    def resume_writing(self) -> None:
        self.session.resume_client_reading(STORE_FULL)
