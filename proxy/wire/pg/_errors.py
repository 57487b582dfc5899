"""Errors raised by the sans-IO PostgreSQL codec."""


class ProtocolError(Exception):
    """The peer broke the wire protocol.  The connection cannot continue.

    ``sqlstate`` is what the proxy tells a client about it (08P01,
    protocol_violation, unless a more precise code applies).
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
