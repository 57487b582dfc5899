"""Tracker: pairs each client request with the server's answer to it.

Each case queues the requests a client sends, then feeds the backend messages
a real PostgreSQL server sends in answer (through a BackendScanner, as the
relay does) and states exactly which completions come out, message by
message.
"""

from __future__ import annotations

from struct import pack

import pytest

from proxy.wire.pg import BackendScanner, Completion, ProtocolError, Request, Tracker
from proxy.wire.pg._tracker import B, C, D, E, F, P, Q, S

I_, T_, E_ = ord("I"), ord("T"), ord("E")  # ReadyForQuery statuses


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + pack("!i", len(body) + 4) + body


def cc(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


def rfq(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def error(code: str = "23505", text: str = "duplicate key") -> bytes:
    return msg(b"E", b"SERROR\0VERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


def err_body(code: str = "23505", text: str = "duplicate key") -> bytes:
    return error(code, text)[5:]


ROW_DESC = msg(b"T", pack("!h", 1) + b"n\0" + pack("!IhIhih", 0, 0, 23, 4, -1, 0))
DATA_ROW = msg(b"D", pack("!hi", 1, 1) + b"7")
PARSE_OK, BIND_OK, CLOSE_OK = msg(b"1"), msg(b"2"), msg(b"3")
NO_DATA, EMPTY, SUSPENDED = msg(b"n"), msg(b"I"), msg(b"s")
PARAM_DESC = msg(b"t", pack("!hI", 1, 23))
NOTICE = msg(b"N", b"SWARNING\0C25001\0Mthere is already a transaction in progress\0\0")
PARAM_STATUS = msg(b"S", b"TimeZone\0UTC\0")


class Server:
    """Feeds server bytes to a tracker the way the relay does."""

    def __init__(self, *requests: tuple[int, object]) -> None:
        self.tracker = Tracker()
        self.scanner = BackendScanner()
        for kind, token in requests:
            self.tracker.request(kind, token)

    def send(self, *messages: bytes) -> list[Completion]:
        out: list[Completion] = []
        for t, body in self.scanner.feed(b"".join(messages)):
            if t == ord("S"):  # ParameterStatus: the relay does not track it
                continue
            out.extend(self.tracker.response(t, body))
        return out


def done(
    kind: int,
    token: object,
    tags: list[str] | None = None,
    *,
    error: bytes | None = None,
    skipped: bool = False,
    copy: int = 0,
    status: int = 0,
    failed_batch: bool = False,
) -> Completion:
    return Completion(Request(kind, token, tags or [], error, skipped, copy), status, failed_batch)


# ----------------------------------------------------------------------- simple Query


def test_simple_query_collects_every_command_tag_until_ready() -> None:
    s = Server((Q, "q"))
    assert s.send(cc("BEGIN")) == []
    assert s.send(cc("INSERT 0 1"), cc("UPDATE 2")) == []
    assert s.tracker.pending == 1
    assert s.send(rfq(b"T")) == [done(Q, "q", ["BEGIN", "INSERT 0 1", "UPDATE 2"], status=T_)]
    assert s.tracker.pending == 0
    assert s.tracker.status == T_


def test_simple_select_with_rows_and_notices() -> None:
    s = Server((Q, "q"))
    assert s.send(ROW_DESC, DATA_ROW, DATA_ROW, NOTICE, cc("SELECT 2"), PARAM_STATUS) == []
    assert s.send(rfq()) == [done(Q, "q", ["SELECT 2"], status=I_)]


def test_simple_query_error_fails_the_query_and_the_batch() -> None:
    s = Server((Q, "q"), (Q, "next"))
    assert s.send(cc("INSERT 0 1")) == []
    assert s.send(error()) == []  # the Query still waits for ReadyForQuery
    assert s.tracker.batch_error
    assert s.send(rfq()) == [
        done(Q, "q", ["INSERT 0 1"], error=err_body(), status=I_, failed_batch=True)
    ]
    assert not s.tracker.batch_error
    # The next query is not affected by the previous error.
    assert s.send(cc("DELETE 0"), rfq()) == [done(Q, "next", ["DELETE 0"], status=I_)]


def test_error_inside_a_transaction_leaves_status_failed() -> None:
    s = Server((Q, "bad"), (Q, "rollback"))
    assert s.send(error("42P01", "relation does not exist"), rfq(b"E")) == [
        done(
            Q,
            "bad",
            error=err_body("42P01", "relation does not exist"),
            status=E_,
            failed_batch=True,
        )
    ]
    assert s.tracker.status == E_
    assert s.send(cc("ROLLBACK"), rfq()) == [done(Q, "rollback", ["ROLLBACK"], status=I_)]


def test_empty_query_response_in_simple_query() -> None:
    s = Server((Q, "q"))
    assert s.send(EMPTY) == []
    assert s.send(rfq()) == [done(Q, "q", status=I_)]


def test_function_call() -> None:
    s = Server((F, "f"))
    assert s.send(msg(b"V", pack("!i", 1) + b"1")) == []
    assert s.send(rfq()) == [done(F, "f", status=I_)]


# ----------------------------------------------------------------------- COPY


def test_copy_in() -> None:
    s = Server((Q, "copy"))
    assert s.send(msg(b"G", pack("!bhh", 0, 1, 0))) == []
    assert s.tracker.head == Request(Q, "copy", copy=ord("G"))
    # (the client streams CopyData and CopyDone here)
    assert s.send(cc("COPY 2")) == []
    assert s.send(rfq()) == [done(Q, "copy", ["COPY 2"], copy=ord("G"), status=I_)]


def test_copy_out() -> None:
    s = Server((Q, "copy"))
    assert s.send(msg(b"H", pack("!bhh", 0, 1, 0))) == []
    assert s.send(msg(b"d", b"1\n"), msg(b"d", b"2\n"), msg(b"d", b"3\n"), msg(b"c")) == []
    assert s.send(cc("COPY 3"), rfq()) == [done(Q, "copy", ["COPY 3"], copy=ord("H"), status=I_)]


def test_copy_in_failed_by_the_client() -> None:
    s = Server((Q, "copy"))
    assert s.send(msg(b"G", pack("!bh", 0, 0))) == []
    # CopyFail from the client: the server answers with an error.
    assert s.send(error("57014", "COPY from stdin failed")) == []
    assert s.send(rfq()) == [
        done(
            Q,
            "copy",
            error=err_body("57014", "COPY from stdin failed"),
            copy=ord("G"),
            status=I_,
            failed_batch=True,
        )
    ]


def test_copy_in_extended_protocol() -> None:
    s = Server((P, "p"), (B, "b"), (E, "e"), (S, "s"))
    assert s.send(PARSE_OK, BIND_OK) == [done(P, "p"), done(B, "b")]
    assert s.send(msg(b"G", pack("!bh", 0, 0))) == []
    assert s.send(cc("COPY 5")) == [done(E, "e", ["COPY 5"], copy=ord("G"))]
    assert s.send(rfq()) == [done(S, "s", status=I_)]


# ----------------------------------------------------------------------- extended protocol


def test_extended_happy_path_message_by_message() -> None:
    s = Server((P, "p"), (B, "b"), (D, "d"), (E, "e"), (S, "s"))
    assert s.send(PARSE_OK) == [done(P, "p")]
    assert s.send(BIND_OK) == [done(B, "b")]
    assert s.send(ROW_DESC) == [done(D, "d")]
    assert s.send(DATA_ROW, DATA_ROW, DATA_ROW) == []
    assert s.send(cc("SELECT 3")) == [done(E, "e", ["SELECT 3"])]
    assert s.tracker.pending == 1
    assert s.send(rfq()) == [done(S, "s", status=I_)]
    assert s.tracker.pending == 0


def test_extended_all_answers_in_one_chunk() -> None:
    s = Server((P, 1), (B, 2), (D, 3), (E, 4), (S, 5))
    assert s.send(PARSE_OK, BIND_OK, NO_DATA, cc("INSERT 0 1"), rfq(b"T")) == [
        done(P, 1),
        done(B, 2),
        done(D, 3),
        done(E, 4, ["INSERT 0 1"]),
        done(S, 5, status=T_),
    ]


def test_describe_statement() -> None:
    s = Server((P, "p"), (D, "d-rows"), (D, "d-none"), (S, "s"))
    assert s.send(PARSE_OK) == [done(P, "p")]
    assert s.send(PARAM_DESC) == []  # ParameterDescription: the RowDescription follows
    assert s.send(ROW_DESC) == [done(D, "d-rows")]
    assert s.send(PARAM_DESC, NO_DATA) == [done(D, "d-none")]
    assert s.send(rfq()) == [done(S, "s", status=I_)]


def test_portal_suspended() -> None:
    s = Server((B, "b"), (E, "e1"), (E, "e2"), (S, "s"))
    assert s.send(BIND_OK, DATA_ROW, DATA_ROW) == [done(B, "b")]
    assert s.send(SUSPENDED) == [done(E, "e1")]
    assert s.send(DATA_ROW, cc("SELECT 1")) == [done(E, "e2", ["SELECT 1"])]
    assert s.send(rfq(b"T")) == [done(S, "s", status=T_)]


def test_empty_query_response_in_extended_protocol() -> None:
    s = Server((P, "p"), (B, "b"), (E, "e"), (S, "s"))
    assert s.send(PARSE_OK, BIND_OK, EMPTY, rfq()) == [
        done(P, "p"),
        done(B, "b"),
        done(E, "e"),
        done(S, "s", status=I_),
    ]


def test_close_statement() -> None:
    s = Server((C, "c"), (S, "s"))
    assert s.send(CLOSE_OK) == [done(C, "c")]
    assert s.send(rfq()) == [done(S, "s", status=I_)]


def test_error_in_the_middle_of_an_extended_batch() -> None:
    s = Server(
        (P, "p1"), (B, "b1"), (E, "e1"),
        (P, "p2"), (B, "b2"), (E, "e2"),
        (P, "p3"), (B, "b3"), (E, "e3"),
        (S, "s"),
    )  # fmt: skip
    assert s.send(PARSE_OK, BIND_OK, cc("INSERT 0 1")) == [
        done(P, "p1"),
        done(B, "b1"),
        done(E, "e1", ["INSERT 0 1"]),
    ]
    assert s.send(PARSE_OK) == [done(P, "p2")]
    # The Bind fails; the server skips everything up to the Sync.
    assert s.send(error("22P02", "invalid input syntax")) == [
        done(B, "b2", error=err_body("22P02", "invalid input syntax")),
        done(E, "e2", skipped=True),
        done(P, "p3", skipped=True),
        done(B, "b3", skipped=True),
        done(E, "e3", skipped=True),
    ]
    assert s.tracker.head == Request(S, "s")
    assert s.send(rfq()) == [done(S, "s", status=I_, failed_batch=True)]
    assert not s.tracker.batch_error


def test_error_in_a_batch_does_not_spill_into_the_next_batch() -> None:
    s = Server(
        (P, "p1"), (B, "b1"), (E, "e1"), (S, "s1"),
        (P, "p2"), (B, "b2"), (E, "e2"), (S, "s2"),
    )  # fmt: skip
    assert s.send(PARSE_OK, BIND_OK, error()) == [
        done(P, "p1"),
        done(B, "b1"),
        done(E, "e1", error=err_body()),
    ]
    assert s.send(rfq(b"E")) == [done(S, "s1", status=E_, failed_batch=True)]
    assert s.send(PARSE_OK, BIND_OK, cc("ROLLBACK"), rfq()) == [
        done(P, "p2"),
        done(B, "b2"),
        done(E, "e2", ["ROLLBACK"]),
        done(S, "s2", status=I_),
    ]


def test_parse_error_is_the_head_failing() -> None:
    s = Server((P, "p"), (B, "b"), (D, "d"), (E, "e"), (S, "s"))
    assert s.send(error("42601", "syntax error"), rfq()) == [
        done(P, "p", error=err_body("42601", "syntax error")),
        done(B, "b", skipped=True),
        done(D, "d", skipped=True),
        done(E, "e", skipped=True),
        done(S, "s", status=I_, failed_batch=True),
    ]


def test_error_at_sync_fails_the_batch() -> None:
    # A deferred constraint checked when the implicit transaction commits at
    # Sync: every request succeeded, then ErrorResponse, then ReadyForQuery.
    s = Server((P, "p1"), (B, "b1"), (E, "e1"), (S, "s1"), (Q, "next"))
    assert s.send(PARSE_OK, BIND_OK, cc("INSERT 0 1")) == [
        done(P, "p1"),
        done(B, "b1"),
        done(E, "e1", ["INSERT 0 1"]),
    ]
    assert s.send(error("23503", "violates foreign key constraint")) == []
    assert s.send(rfq()) == [
        done(
            S,
            "s1",
            error=err_body("23503", "violates foreign key constraint"),
            status=I_,
            failed_batch=True,
        )
    ]
    # The query pipelined behind the batch is answered normally.
    assert s.send(cc("INSERT 0 1"), rfq()) == [done(Q, "next", ["INSERT 0 1"], status=I_)]


def test_sync_only_batch() -> None:
    s = Server((S, "s"))
    assert s.send(rfq(b"T")) == [done(S, "s", status=T_)]


# ----------------------------------------------------------------------- unexpected messages


@pytest.mark.parametrize(
    ("requests", "answer", "message"),
    [
        ([], cc("SELECT 1"), "unexpected backend message 'C' with no request pending"),
        ([], rfq(), "unexpected backend message 'Z' with no request pending"),
        ([], PARSE_OK, "unexpected backend message '1' with no request pending"),
        ([(P, "p")], BIND_OK, "backend message '2' does not answer 'P'"),
        ([(B, "b")], PARSE_OK, "backend message '1' does not answer 'B'"),
        ([(E, "e")], ROW_DESC, "backend message 'T' does not answer 'E'"),
        ([(D, "d")], cc("SELECT 1"), "backend message 'C' does not answer 'D'"),
        ([(C, "c")], SUSPENDED, "backend message 's' does not answer 'C'"),
    ],
    ids=["C-idle", "Z-idle", "1-idle", "2-for-P", "1-for-B", "T-for-E", "C-for-D", "s-for-C"],
)
def test_unexpected_message_raises(
    requests: list[tuple[int, object]], answer: bytes, message: str
) -> None:
    s = Server(*requests)
    with pytest.raises(ProtocolError, match=message) as info:
        s.send(answer)
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "answer",
    [
        error("57P01", "terminating connection due to administrator command"),
        PARAM_STATUS,
        msg(b"K", pack("!i", 1) + b"abcd"),
    ],
    ids=["fatal-error", "parameter-status", "backend-key"],
)
def test_asynchronous_messages_with_no_request_pending_are_ignored(answer: bytes) -> None:
    t = Tracker()
    ((kind, body),) = BackendScanner().feed(answer)
    assert t.response(kind, body) == []
    assert t.pending == 0


def test_head_and_pending() -> None:
    t = Tracker()
    assert t.head is None
    assert t.pending == 0
    req = t.request(Q, "token")
    assert req == Request(Q, "token")
    assert t.head is req
    assert t.pending == 1
    assert t.status == I_
