"""Builders for the few messages the proxy writes itself.

Constant frames are built once at import.
"""

from __future__ import annotations

from struct import pack


def _msg(t: bytes, body: bytes) -> bytes:
    return t + pack("!i", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape") + b"\0"


SSL_NO = b"N"
SSL_YES = b"S"
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
COPY_DONE = b"c\x00\x00\x00\x04"
AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
EXECUTE_UNNAMED_ALL = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
DESCRIBE_PORTAL_UNNAMED = b"D\x00\x00\x00\x06P\x00"


def error_response(sqlstate: str, message: str, severity: str = "FATAL") -> bytes:
    body = (
        b"S"
        + _cstr(severity)
        + b"V"
        + _cstr(severity)
        + b"C"
        + _cstr(sqlstate)
        + b"M"
        + _cstr(message)
        + b"\0"
    )
    return _msg(b"E", body)


def backend_key_data(process_id: int, secret: bytes) -> bytes:
    return _msg(b"K", pack("!i", process_id) + secret)


def startup_message(params: dict[str, str], protocol: int = 196608) -> bytes:
    body = pack("!i", protocol) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return pack("!i", len(body) + 4) + body


def cancel_request(process_id: int, secret: bytes) -> bytes:
    return pack("!iii", 16, 80877102, process_id) + secret


def query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def parse(name: str, body: bytes) -> bytes:
    """Parse with a statement name and the body the client sent after its name."""
    return _msg(b"P", _cstr(name) + body)


def bind(statement: str, body: bytes) -> bytes:
    """Bind to the unnamed portal, with the client's body after the names."""
    return _msg(b"B", b"\0" + _cstr(statement) + body)


def close_statement(name: str) -> bytes:
    return _msg(b"C", b"S" + _cstr(name))


def copy_data(data: bytes) -> bytes:
    return _msg(b"d", data)


def password(secret: bytes) -> bytes:
    return _msg(b"p", secret + b"\0")


def sasl_initial(mechanism: str, data: bytes) -> bytes:
    return _msg(b"p", _cstr(mechanism) + pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _msg(b"p", data)
