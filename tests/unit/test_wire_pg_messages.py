"""Message builders (exact bytes) and the mirror's client authentication.

Expected bytes are written out by hand; md5 and SCRAM-SHA-256 answers are
computed in this file from the PostgreSQL and RFC 5802 / RFC 7677 formulas,
and SCRAM is checked against the RFC 7677 test vector itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from struct import pack

import pytest

from proxy.wire.pg import FrontendParser, ProtocolError, messages
from proxy.wire.pg import events as ev
from proxy.wire.pg._auth import ScramClient, md5_password

# ----------------------------------------------------------------------- builders

PARSE_BODY = b"SELECT $1\0" + pack("!hI", 1, 23)
BIND_BODY = pack("!hhi", 0, 1, 2) + b"42" + pack("!h", 0)  # text, one value "42"

BUILDERS = [
    pytest.param(messages.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00", id="query"),
    pytest.param(messages.query(""), b"Q\x00\x00\x00\x05\x00", id="query-empty"),
    pytest.param(
        messages.query("SELECT 'é'"), b"Q\x00\x00\x00\x10SELECT '\xc3\xa9'\x00", id="query-utf8"
    ),
    pytest.param(
        messages.query("SELECT '\udcff'"),  # surrogateescape: the client's own byte
        b"Q\x00\x00\x00\x0fSELECT '\xff'\x00",
        id="query-raw-byte",
    ),
    pytest.param(
        messages.parse("s1", PARSE_BODY),
        b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
        id="parse",
    ),
    pytest.param(
        messages.bind("s1", BIND_BODY),
        b"B\x00\x00\x00\x14\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00",
        id="bind-unnamed-portal",
    ),
    pytest.param(messages.close_statement("s1"), b"C\x00\x00\x00\x08Ss1\x00", id="close-statement"),
    pytest.param(messages.copy_data(b"1\tx\n"), b"d\x00\x00\x00\x081\tx\n", id="copy-data"),
    pytest.param(messages.password(b"secret"), b"p\x00\x00\x00\x0bsecret\x00", id="password"),
    pytest.param(
        messages.sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
        id="sasl-initial",
    ),
    pytest.param(messages.sasl_response(b"c=biws"), b"p\x00\x00\x00\x0ac=biws", id="sasl-response"),
    pytest.param(
        messages.error_response("08P01", "bad"),
        b"E\x00\x00\x00\x1fSFATAL\x00VFATAL\x00C08P01\x00Mbad\x00\x00",
        id="error-response-fatal",
    ),
    pytest.param(
        messages.error_response("57P01", "bye", "ERROR"),
        b"E\x00\x00\x00\x1fSERROR\x00VERROR\x00C57P01\x00Mbye\x00\x00",
        id="error-response-error",
    ),
    pytest.param(
        messages.backend_key_data(1234, b"\x01\x02\x03\x04"),
        b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\x01\x02\x03\x04",
        id="backend-key-data",
    ),
    pytest.param(
        messages.startup_message({"user": "alice", "database": "shop"}),
        b"\x00\x00\x00\x22\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00\x00",
        id="startup-message",
    ),
    pytest.param(
        messages.startup_message({"user": "u"}, protocol=196610),
        b"\x00\x00\x00\x10\x00\x03\x00\x02user\x00u\x00\x00",
        id="startup-message-3.2",
    ),
    pytest.param(
        messages.cancel_request(4242, b"\x01\x02\x03\x04"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\x01\x02\x03\x04",
        id="cancel-request",
    ),
    pytest.param(messages.SYNC, b"S\x00\x00\x00\x04", id="sync"),
    pytest.param(messages.FLUSH, b"H\x00\x00\x00\x04", id="flush"),
    pytest.param(messages.TERMINATE, b"X\x00\x00\x00\x04", id="terminate"),
    pytest.param(messages.COPY_DONE, b"c\x00\x00\x00\x04", id="copy-done"),
    pytest.param(messages.AUTH_OK, b"R\x00\x00\x00\x08\x00\x00\x00\x00", id="auth-ok"),
    pytest.param(
        messages.EXECUTE_UNNAMED_ALL, b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00", id="execute-all"
    ),
    pytest.param(messages.SSL_NO, b"N", id="ssl-no"),
    pytest.param(messages.SSL_YES, b"S", id="ssl-yes"),
]


@pytest.mark.parametrize(("built", "expected"), BUILDERS)
def test_builder_bytes(built: bytes, expected: bytes) -> None:
    assert built == expected


def test_frontend_builders_parse_back() -> None:
    """What the mirror sends is what a server-side parser reads."""
    startup = messages.startup_message({"user": "alice", "database": "shop"})
    typed = [
        messages.query("SELECT 1"),
        messages.parse("s1", PARSE_BODY),
        messages.bind("s1", BIND_BODY),
        messages.EXECUTE_UNNAMED_ALL,
        messages.close_statement("s1"),
        messages.copy_data(b"x"),
        messages.COPY_DONE,
        messages.SYNC,
        messages.FLUSH,
        messages.password(b"pw"),
        messages.TERMINATE,
    ]
    events = FrontendParser().feed(startup + b"".join(typed))
    assert [(type(e), e) for e in events] == [
        (
            ev.StartupMessage,
            ev.StartupMessage(startup, 196608, (("user", "alice"), ("database", "shop"))),
        ),
        (ev.Query, ev.Query(typed[0], "SELECT 1")),
        (ev.Parse, ev.Parse(typed[1], "s1", "SELECT $1", PARSE_BODY)),
        (ev.Bind, ev.Bind(typed[2], "", "s1", BIND_BODY)),
        (ev.Execute, ev.Execute(typed[3], "", 0)),
        (ev.Close, ev.Close(typed[4], "S", "s1")),
        (ev.CopyData, ev.CopyData(typed[5])),
        (ev.CopyDone, ev.CopyDone(typed[6])),
        (ev.Sync, ev.Sync(typed[7])),
        (ev.Flush, ev.Flush(typed[8])),
        (ev.AuthResponse, ev.AuthResponse(typed[9])),
        (ev.Terminate, ev.Terminate(typed[10])),
    ]
    (cancel,) = FrontendParser().feed(messages.cancel_request(7, b"\xde\xad\xbe\xef"))
    assert isinstance(cancel, ev.CancelRequest)
    assert (cancel.process_id, cancel.secret_key) == (7, b"\xde\xad\xbe\xef")


# ----------------------------------------------------------------------- md5


def pg_md5(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL: "md5" + md5(md5(password + user) as hex + salt) as hex."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return ("md5" + hashlib.md5(inner.encode() + salt).hexdigest()).encode()


@pytest.mark.parametrize(
    ("user", "password", "salt"),
    [
        ("postgres", "postgres", b"\x01\x02\x03\x04"),
        ("app", "s3cr#t/pw", b"\xff\x00\xfe\x7f"),
        ("ütf", "pässwörd", b"abcd"),
        ("", "", b"\0\0\0\0"),
    ],
)
def test_md5_password(user: str, password: str, salt: bytes) -> None:
    got = md5_password(user, password, salt)
    assert got == pg_md5(user, password, salt)
    assert got.startswith(b"md5")
    assert len(got) == 35


def test_md5_password_is_what_the_password_message_carries() -> None:
    hashed = md5_password("alice", "pw", b"salt")
    assert messages.password(hashed) == b"p" + pack("!i", 4 + 35 + 1) + hashed + b"\0"


# ----------------------------------------------------------------------- SCRAM-SHA-256

RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def scram_exchange(password: str, client_first_bare: str, server_first: str) -> tuple[str, str]:
    """RFC 5802 section 3, for SHA-256 and no channel binding: (client-final, server-final)."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=" + base64.b64encode(b"n,,").decode() + ",r=" + attrs["r"]
    auth_message = ",".join((client_first_bare, server_first, without_proof)).encode()
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(k ^ s for k, s in zip(client_key, client_signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return (
        f"{without_proof},p={base64.b64encode(proof).decode()}",
        f"v={base64.b64encode(server_signature).decode()}",
    )


def test_the_reference_formulas_reproduce_the_rfc_7677_vector() -> None:
    assert scram_exchange(RFC_PASSWORD, f"n=user,r={RFC_CLIENT_NONCE}", RFC_SERVER_FIRST) == (
        RFC_CLIENT_FINAL,
        RFC_SERVER_FINAL,
    )


def test_scram_client_first_message_sends_an_empty_user_name() -> None:
    # PostgreSQL takes the user from the startup packet and ignores this one.
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    assert client.first_message() == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"


def test_scram_client_matches_the_rfc_7677_vector_with_the_rfc_user_name() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.first_message()
    client._first_bare = f"n=user,r={RFC_CLIENT_NONCE}"  # what the RFC's client sent
    assert client.final_message(RFC_SERVER_FIRST.encode()).decode() == RFC_CLIENT_FINAL
    client.verify_final(RFC_SERVER_FINAL.encode())


def test_scram_client_with_the_postgresql_convention() -> None:
    client_final, server_final = scram_exchange(
        RFC_PASSWORD, f"n=,r={RFC_CLIENT_NONCE}", RFC_SERVER_FIRST
    )
    assert client_final != RFC_CLIENT_FINAL  # the empty user name is part of the proof
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.first_message()
    assert client.final_message(RFC_SERVER_FIRST.encode()).decode() == client_final
    client.verify_final(server_final.encode())
    # The RFC's server signature was computed over "n=user": not ours.
    with pytest.raises(ProtocolError, match="signature mismatch") as info:
        client.verify_final(RFC_SERVER_FINAL.encode())
    assert info.value.sqlstate == "28000"


def test_scram_client_default_nonce_is_random() -> None:
    a, b = ScramClient("pw"), ScramClient("pw")
    assert a.nonce != b.nonce
    assert len(base64.b64decode(a.nonce)) == 18


@pytest.mark.parametrize(
    "server_first",
    [
        "r=someoneElsesNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        f"r={RFC_CLIENT_NONCE}xyz,i=4096",
        f"r={RFC_CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        f"r={RFC_CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        f"r={RFC_CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        f"r={RFC_CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,garbage",
        f"r={RFC_CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6g,i=4096",
        "e=other-error",
        "",
    ],
    ids=[
        "foreign-nonce",
        "no-salt",
        "no-iterations",
        "negative-iterations",
        "zero-iterations",
        "attribute-without-value",
        "bad-base64-salt",
        "server-error",
        "empty",
    ],
)
def test_scram_client_rejects_a_bad_server_first_message(server_first: str) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.first_message()
    with pytest.raises(ProtocolError, match="invalid SCRAM server-first-message") as info:
        client.final_message(server_first.encode())
    assert info.value.sqlstate == "28000"


def test_scram_client_rejects_a_server_first_message_that_is_not_utf8() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.first_message()
    with pytest.raises(ProtocolError):
        client.final_message(b"r=" + RFC_CLIENT_NONCE.encode() + b"\xff,s=AAAA,i=1")


@pytest.mark.parametrize(
    "server_final",
    [b"e=invalid-proof", b"v=", b"v=AAAA", b"v=not base64!", b"", b"v=\xff"],
    ids=["server-error", "empty-signature", "wrong-signature", "bad-base64", "empty", "not-utf8"],
)
def test_scram_client_rejects_a_bad_server_final_message(server_final: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.first_message()
    client.final_message(RFC_SERVER_FIRST.encode())
    with pytest.raises(ProtocolError, match="SCRAM") as info:
        client.verify_final(server_final)
    assert info.value.sqlstate == "28000"
