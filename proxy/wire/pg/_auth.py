"""Client-side authentication for the proxy's own connections (the mirror).

Pure computations: md5 password hashing and the SCRAM-SHA-256 exchange
(RFC 5802 / RFC 7677, without channel binding).  The caller moves the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field

from proxy.wire.pg._errors import ProtocolError


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


@dataclass(slots=True)
class ScramClient:
    password: str
    nonce: str = field(default_factory=lambda: base64.b64encode(os.urandom(18)).decode())
    _first_bare: str = ""
    _server_signature: bytes = b""

    def first_message(self) -> bytes:
        self._first_bare = f"n=,r={self.nonce}"
        return ("n,," + self._first_bare).encode()

    def final_message(self, server_first: bytes) -> bytes:
        try:  # UnicodeError and binascii.Error are ValueErrors too
            text = server_first.decode()
            attrs = dict(part.split("=", 1) for part in text.split(","))
            nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
            if not nonce.startswith(self.nonce) or not salt or not iterations.isdigit():
                raise ValueError(text)
            salted = hashlib.pbkdf2_hmac(
                "sha256", self.password.encode(), base64.b64decode(salt), int(iterations)
            )
        except (ValueError, OverflowError) as exc:
            raise ProtocolError("invalid SCRAM server-first-message", "28000") from exc
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        try:
            text = server_final.decode()
            signature = base64.b64decode(text[2:]) if text.startswith("v=") else b""
        except ValueError:
            signature = b""
        if not signature or not hmac.compare_digest(signature, self._server_signature):
            raise ProtocolError("SCRAM server signature mismatch", "28000")
