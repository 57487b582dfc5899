"""Recorder: mirror units from what a session did on the authoritative store.

A small driver plays the relay's part exactly: client bytes (built with the
``messages`` builders) go through a FrontendParser and into the recorder and
the tracker; the bytes a real PostgreSQL server sends in answer go through a
BackendScanner into the tracker, and every completion into the recorder.
Each test states the emitted units exactly, and when they are emitted.
"""

from __future__ import annotations

from struct import pack

import pytest

from proxy.classify import Kind
from proxy.mirror.recorder import Recorder, _is_rollback_to
from proxy.mirror.unit import Item, ItemKind, Unit
from proxy.wire.pg import BackendScanner, FrontendParser, Tracker, messages
from proxy.wire.pg import events as ev
from proxy.wire.pg._tracker import B, C, D, E, F, P, Q, S

SESSION = 7
NOW = 1_700_000_000.5

# ----------------------------------------------------------------------- client side


def parse_body(sql: str, *oids: int) -> bytes:
    return sql.encode() + b"\0" + pack(f"!h{len(oids)}I", len(oids), *oids)


def bind_body(*values: bytes | None) -> bytes:
    """Text parameters (no format codes), text results."""
    out = pack("!hh", 0, len(values))
    for v in values:
        out += pack("!i", -1) if v is None else pack("!i", len(v)) + v
    return out + pack("!h", 0)


DESCRIBE_PORTAL = b"D" + pack("!i", 6) + b"P\0"


def extended(sql: str, *values: bytes | None, name: str = "", parse: bool = True) -> bytes:
    """One statement the way libpq's PQexecParams / pgbench -M extended sends it."""
    head = messages.parse(name, parse_body(sql, *([0] * len(values)))) if parse else b""
    return (
        head
        + messages.bind(name, bind_body(*values))
        + DESCRIBE_PORTAL
        + messages.EXECUTE_UNNAMED_ALL
    )


def execute_item(sql: str, *values: bytes | None, tag: str) -> Item:
    return Item(
        ItemKind.EXECUTE,
        sql,
        parse_body=parse_body(sql, *([0] * len(values))),
        bind_body=bind_body(*values),
        tags=[tag],
    )


def query_item(sql: str, *tags: str) -> Item:
    return Item(ItemKind.QUERY, sql, tags=list(tags))


def unit(seq: int, *items: Item, in_transaction: bool, prelude: tuple[str, ...] = ()) -> Unit:
    return Unit(
        session_id=SESSION,
        seq=seq,
        in_transaction=in_transaction,
        prelude=prelude,
        items=list(items),
        committed_at=NOW,
    )


# ----------------------------------------------------------------------- server side


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + pack("!i", len(body) + 4) + body


def cc(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


def rfq(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def error(code: str = "23505", text: str = "duplicate key value") -> bytes:
    return messages.error_response(code, text, "ERROR")


PARSE_OK, BIND_OK, NO_DATA = msg(b"1"), msg(b"2"), msg(b"n")
ROW_DESC = msg(b"T", pack("!h", 1) + b"abalance\0" + pack("!IhIhih", 16397, 3, 23, 4, -1, 0))
DATA_ROW = msg(b"D", pack("!hi", 1, 4) + b"1234")
PARAM_STATUS = msg(b"S", b"search_path\0app, public\0")


def answered(tag: str, status: bytes = b"", *, rows: bool = False) -> bytes:
    """The server's answer to ``extended(...)`` (plus ReadyForQuery if a status is given)."""
    desc = ROW_DESC + DATA_ROW if rows else NO_DATA
    return PARSE_OK + BIND_OK + desc + cc(tag) + (rfq(status) if status else b"")


def answered_bound(tag: str, status: bytes = b"") -> bytes:
    """The answer to ``extended(..., parse=False)``."""
    return BIND_OK + NO_DATA + cc(tag) + (rfq(status) if status else b"")


# ----------------------------------------------------------------------- the driver


class Session:
    """The relay's request/answer plumbing (proxy/relay/client.py) around a Recorder."""

    def __init__(self, mirroring: bool = True) -> None:
        self.units: list[Unit] = []
        self.unmirrorable: list[tuple[Unit, str]] = []
        self.rec = Recorder(
            SESSION,
            self.units.append,
            lambda kept, why: self.unmirrorable.append((kept, why)),
            clock=lambda: NOW,
        )
        self.rec.mirroring = mirroring
        self.tracker = Tracker()
        self.scanner = BackendScanner()
        self.parser = FrontendParser()
        assert [type(e) for e in self.parser.feed(messages.startup_message({"user": "app"}))] == [
            ev.StartupMessage
        ]

    def client(self, *data: bytes) -> None:
        tracker, rec = self.tracker, self.rec
        for e in self.parser.feed(b"".join(data)):
            if isinstance(e, ev.Bind):
                rec.bind(e)
                tracker.request(B)
            elif isinstance(e, ev.Execute):
                tracker.request(E, rec.execute(e)[1])
            elif isinstance(e, ev.Parse):
                rec.parse(e)
                tracker.request(P)
            elif isinstance(e, ev.Sync):
                tracker.request(S)
            elif isinstance(e, ev.Describe):
                tracker.request(D)
            elif isinstance(e, ev.Query):
                tracker.request(Q, rec.query(e)[1])
            elif isinstance(e, ev.CopyData):
                head = tracker.head
                if head is not None:
                    rec.copy_data(head.token, e)
            elif isinstance(e, ev.Close):
                rec.close(e)
                tracker.request(C)
            elif isinstance(e, ev.FunctionCall):
                tracker.request(F)

    def server(self, *data: bytes) -> list[Unit]:
        """Feed the server's bytes; return the units emitted meanwhile."""
        before = len(self.units)
        for t, body in self.scanner.feed(b"".join(data)):
            if t == ord("S"):  # ParameterStatus: not tracked
                continue
            for c in self.tracker.response(t, body):
                self.rec.complete(c)
        return self.units[before:]

    def simple(self, sql: str, *answer: bytes) -> list[Unit]:
        self.client(messages.query(sql))
        return self.server(*answer)


# ----------------------------------------------------------------------- autocommit


def test_autocommit_write_is_emitted() -> None:
    s = Session()
    sql = "INSERT INTO t VALUES (1)"
    assert s.simple(sql, cc("INSERT 0 1")) == []  # not before ReadyForQuery
    assert s.server(rfq()) == [unit(1, query_item(sql, "INSERT 0 1"), in_transaction=False)]


def test_read_is_not_emitted() -> None:
    s = Session()
    assert s.simple("SELECT * FROM t", ROW_DESC, DATA_ROW, DATA_ROW, cc("SELECT 2"), rfq()) == []
    assert s.units == []


def test_multi_statement_query_is_one_item_with_every_tag() -> None:
    s = Session()
    sql = "INSERT INTO t VALUES (1); UPDATE t SET n = n + 1"
    assert s.simple(sql, cc("INSERT 0 1"), cc("UPDATE 1"), rfq()) == [
        unit(1, query_item(sql, "INSERT 0 1", "UPDATE 1"), in_transaction=False)
    ]


def test_failed_autocommit_write_is_dropped() -> None:
    s = Session()
    assert s.simple("INSERT INTO t VALUES (1)", error(), rfq()) == []
    ok = "INSERT INTO t VALUES (2)"
    assert s.simple(ok, cc("INSERT 0 1"), rfq()) == [
        unit(1, query_item(ok, "INSERT 0 1"), in_transaction=False)
    ]


def test_partially_committed_multi_statement_query_is_reported() -> None:
    s = Session()
    sql = "BEGIN; INSERT INTO t VALUES (1); COMMIT; INSERT INTO t VALUES (1)"
    assert s.simple(sql, cc("BEGIN"), cc("INSERT 0 1"), cc("COMMIT"), error(), rfq()) == []
    # Not mirrored, not dropped: the whole query is kept for repair, with its tags.
    assert s.unmirrorable == [
        (
            unit(1, query_item(sql, "BEGIN", "INSERT 0 1", "COMMIT"), in_transaction=True),
            "partially committed multi-statement query",
        )
    ]


def test_extended_autocommit_write() -> None:
    s = Session()
    sql = "INSERT INTO t VALUES ($1, $2)"
    s.client(extended(sql, b"1", None), messages.SYNC)
    assert s.server(answered("INSERT 0 1")) == []
    assert s.server(rfq()) == [
        unit(1, execute_item(sql, b"1", None, tag="INSERT 0 1"), in_transaction=False)
    ]


def test_two_writes_in_one_sync_are_one_implicit_transaction() -> None:
    s = Session()
    a, b = "INSERT INTO t VALUES ($1)", "DELETE FROM u WHERE id = $1"
    s.client(extended(a, b"1"), extended(b, b"2"), messages.SYNC)
    assert s.server(answered("INSERT 0 1"), answered("DELETE 1"), rfq()) == [
        unit(
            1,
            execute_item(a, b"1", tag="INSERT 0 1"),
            execute_item(b, b"2", tag="DELETE 1"),
            in_transaction=True,
        )
    ]


def test_failed_implicit_extended_batch_is_dropped() -> None:
    s = Session()
    a, b = "INSERT INTO t VALUES ($1)", "INSERT INTO t VALUES ($1)"
    s.client(extended(a, b"1"), extended(b, b"1"), messages.SYNC)
    # The first INSERT succeeded, the second failed: the implicit transaction
    # rolled back, so the store kept nothing.
    assert s.server(answered("INSERT 0 1"), PARSE_OK, BIND_OK, NO_DATA, error()) == []
    assert s.server(rfq()) == []
    # The next batch is recorded normally.
    s.client(extended(a, b"3"), messages.SYNC)
    assert s.server(answered("INSERT 0 1", b"I")) == [
        unit(1, execute_item(a, b"3", tag="INSERT 0 1"), in_transaction=False)
    ]


def test_implicit_batch_failing_at_sync_is_dropped() -> None:
    # A deferred constraint fails when the implicit transaction commits at Sync.
    s = Session()
    sql = "INSERT INTO child VALUES ($1)"
    s.client(extended(sql, b"1"), messages.SYNC)
    assert s.server(answered("INSERT 0 1"), error("23503", "violates foreign key")) == []
    assert s.server(rfq()) == []
    assert s.units == []


# ----------------------------------------------------------------------- explicit transactions


def test_simple_protocol_transaction_is_one_unit() -> None:
    s = Session()
    assert s.simple("BEGIN", cc("BEGIN"), rfq(b"T")) == []
    assert s.simple("SELECT n FROM t", ROW_DESC, DATA_ROW, cc("SELECT 1"), rfq(b"T")) == []
    assert s.simple("UPDATE t SET n = 2", cc("UPDATE 1"), rfq(b"T")) == []
    assert s.simple("COMMIT", cc("COMMIT")) == []
    assert s.server(rfq()) == [
        unit(
            1,
            query_item("BEGIN", "BEGIN"),
            query_item("UPDATE t SET n = 2", "UPDATE 1"),
            query_item("COMMIT", "COMMIT"),
            in_transaction=True,
        )
    ]


def test_rollback_drops_the_transaction() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    assert s.simple("ROLLBACK", cc("ROLLBACK"), rfq()) == []
    sql = "INSERT INTO t VALUES (2)"
    assert s.simple(sql, cc("INSERT 0 1"), rfq()) == [
        unit(1, query_item(sql, "INSERT 0 1"), in_transaction=False)
    ]


def test_error_inside_a_transaction_then_rollback_drops_it() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    assert s.simple("INSERT INTO t VALUES (1)", error(), rfq(b"E")) == []
    assert s.simple("SELECT 1", error("25P02", "current transaction is aborted"), rfq(b"E")) == []
    assert s.simple("ROLLBACK", cc("ROLLBACK"), rfq()) == []
    assert s.units == []


def test_commit_of_a_failed_transaction_answers_rollback_and_is_dropped() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", error(), rfq(b"E"))
    assert s.simple("COMMIT", cc("ROLLBACK"), rfq()) == []
    assert s.units == []


def test_savepoint_and_rollback_to_keep_the_surviving_items() -> None:
    s = Session()
    for sql, tag in [
        ("BEGIN", "BEGIN"),
        ("INSERT INTO t VALUES (1)", "INSERT 0 1"),
        ("SAVEPOINT s", "SAVEPOINT"),
    ]:
        assert s.simple(sql, cc(tag), rfq(b"T")) == []
    assert s.simple("INSERT INTO t VALUES (1)", error(), rfq(b"E")) == []  # not kept
    assert s.simple("ROLLBACK TO SAVEPOINT s", cc("ROLLBACK"), rfq(b"T")) == []
    assert s.simple("INSERT INTO t VALUES (3)", cc("INSERT 0 1"), rfq(b"T")) == []
    assert s.simple("COMMIT", cc("COMMIT"), rfq()) == [
        unit(
            1,
            query_item("BEGIN", "BEGIN"),
            query_item("INSERT INTO t VALUES (1)", "INSERT 0 1"),
            query_item("SAVEPOINT s", "SAVEPOINT"),
            query_item("ROLLBACK TO SAVEPOINT s", "ROLLBACK"),
            query_item("INSERT INTO t VALUES (3)", "INSERT 0 1"),
            query_item("COMMIT", "COMMIT"),
            in_transaction=True,
        )
    ]


# ----------------------------------------------------------------------- extended protocol

BEGIN, END = "BEGIN", "END"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
INSERT = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"


def test_pgbench_extended_transaction_each_statement_in_its_own_sync() -> None:
    s = Session()
    steps: list[tuple[bytes, bytes]] = [
        (extended(BEGIN), answered("BEGIN", b"T")),
        (extended(UPDATE, b"-17", b"4242"), answered("UPDATE 1", b"T")),
        (extended(SELECT, b"4242"), answered("SELECT 1", b"T", rows=True)),
        (extended(INSERT, b"3", b"1", b"4242", b"-17"), answered("INSERT 0 1", b"T")),
    ]
    for request, answer in steps:
        s.client(request, messages.SYNC)
        assert s.server(answer) == []
    s.client(extended(END), messages.SYNC)
    expected = unit(
        1,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(UPDATE, b"-17", b"4242", tag="UPDATE 1"),
        execute_item(INSERT, b"3", b"1", b"4242", b"-17", tag="INSERT 0 1"),
        execute_item(END, tag="COMMIT"),
        in_transaction=True,
    )
    # END's COMMIT tag closes the unit at once, before ReadyForQuery.
    assert s.server(PARSE_OK, BIND_OK, NO_DATA, cc("COMMIT")) == [expected]
    assert s.server(rfq()) == []
    assert s.units == [expected]


def test_named_statements_re_executed_with_new_parameters() -> None:
    s = Session()
    names = {BEGIN: "P0_1", UPDATE: "P0_2", END: "P0_3"}
    for round_, delta in enumerate((b"5", b"-3")):
        for sql, values, tag in [
            (BEGIN, (), "BEGIN"),
            (UPDATE, (delta, b"7"), "UPDATE 1"),
            (END, (), "COMMIT"),
        ]:
            if round_ == 0:
                s.client(extended(sql, *values, name=names[sql]), messages.SYNC)
                s.server(answered(tag, b"I" if tag == "COMMIT" else b"T"))
            else:
                s.client(extended(sql, *values, name=names[sql], parse=False), messages.SYNC)
                s.server(answered_bound(tag, b"I" if tag == "COMMIT" else b"T"))
    first, second = s.units
    assert first == unit(
        1,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(UPDATE, b"5", b"7", tag="UPDATE 1"),
        execute_item(END, tag="COMMIT"),
        in_transaction=True,
    )
    assert second == unit(
        2,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(UPDATE, b"-3", b"7", tag="UPDATE 1"),
        execute_item(END, tag="COMMIT"),
        in_transaction=True,
    )
    assert first.items[1].parse_body == second.items[1].parse_body
    assert first.items[1].bind_body != second.items[1].bind_body


def test_closed_statement_is_forgotten() -> None:
    s = Session()
    s.client(messages.parse("s1", parse_body(UPDATE, 0, 0)), messages.SYNC)
    s.server(PARSE_OK, rfq())
    s.client(messages.close_statement("s1"), messages.SYNC)
    s.server(msg(b"3"), rfq())
    # A Bind to the closed statement fails on the server; so does its Execute.
    s.client(
        messages.bind("s1", bind_body(b"1", b"2")), messages.EXECUTE_UNNAMED_ALL, messages.SYNC
    )
    assert s.server(error("26000", "prepared statement does not exist"), rfq()) == []
    assert s.units == []


def test_extended_rollback_drops_the_transaction() -> None:
    s = Session()
    s.client(extended(BEGIN), messages.SYNC)
    s.server(answered("BEGIN", b"T"))
    s.client(extended(UPDATE, b"1", b"2"), messages.SYNC)
    s.server(answered("UPDATE 1", b"T"))
    s.client(extended("ROLLBACK"), messages.SYNC)
    assert s.server(answered("ROLLBACK", b"I")) == []
    assert s.units == []


def test_extended_error_inside_a_transaction_then_rollback() -> None:
    s = Session()
    s.client(extended(BEGIN), messages.SYNC)
    s.server(answered("BEGIN", b"T"))
    s.client(extended(UPDATE, b"1", b"2"), messages.SYNC)
    s.server(answered("UPDATE 1", b"T"))
    s.client(extended(UPDATE, b"x", b"2"), messages.SYNC)
    assert s.server(PARSE_OK, error("22P02", "invalid input syntax"), rfq(b"E")) == []
    s.client(extended("ROLLBACK"), messages.SYNC)
    assert s.server(answered("ROLLBACK", b"I")) == []
    assert s.units == []


def test_extended_savepoint_and_rollback_to_keep_the_transaction() -> None:
    # ROLLBACK TO SAVEPOINT answers with the tag ROLLBACK too, but the
    # transaction goes on: the unit must not be closed (nor dropped) there.
    s = Session()
    steps = [
        (BEGIN, (), "BEGIN"),
        ("INSERT INTO t VALUES ($1)", (b"1",), "INSERT 0 1"),
        ("SAVEPOINT s", (), "SAVEPOINT"),
        ("INSERT INTO t VALUES ($1)", (b"2",), "INSERT 0 1"),
        ("ROLLBACK TO SAVEPOINT s", (), "ROLLBACK"),
        ("INSERT INTO t VALUES ($1)", (b"3",), "INSERT 0 1"),
    ]
    for sql, values, tag in steps:
        s.client(extended(sql, *values), messages.SYNC)
        assert s.server(answered(tag, b"T")) == []
    s.client(extended("COMMIT"), messages.SYNC)
    assert s.server(answered("COMMIT", b"I")) == [
        unit(
            1,
            *(execute_item(sql, *values, tag=tag) for sql, values, tag in steps),
            execute_item("COMMIT", tag="COMMIT"),
            in_transaction=True,
        )
    ]


def test_pipeline_with_two_transactions_in_one_sync_batch() -> None:
    s = Session()
    a, b = "INSERT INTO t VALUES ($1)", "UPDATE t SET n = $1"
    s.client(
        extended(BEGIN),
        extended(a, b"1"),
        extended("COMMIT"),
        extended(BEGIN),
        extended(b, b"2"),
        extended("COMMIT"),
        extended(a, b"3"),  # after the second COMMIT: an implicit transaction
        messages.SYNC,
    )
    first = unit(
        1,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(a, b"1", tag="INSERT 0 1"),
        execute_item("COMMIT", tag="COMMIT"),
        in_transaction=True,
    )
    second = unit(
        2,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(b, b"2", tag="UPDATE 1"),
        execute_item("COMMIT", tag="COMMIT"),
        in_transaction=True,
    )
    third = unit(3, execute_item(a, b"3", tag="INSERT 0 1"), in_transaction=False)
    assert s.server(answered("BEGIN"), answered("INSERT 0 1")) == []
    assert s.server(answered("COMMIT")) == [first]
    assert s.server(answered("BEGIN"), answered("UPDATE 1")) == []
    assert s.server(answered("COMMIT")) == [second]
    assert s.server(answered("INSERT 0 1")) == []
    assert s.server(rfq()) == [third]


def test_pipeline_error_after_a_commit_keeps_the_committed_transaction() -> None:
    s = Session()
    a = "INSERT INTO t VALUES ($1)"
    s.client(
        extended(BEGIN),
        extended(a, b"1"),
        extended("COMMIT"),
        extended(a, b"2"),
        extended(a, b"1"),
        messages.SYNC,
    )
    committed = unit(
        1,
        execute_item(BEGIN, tag="BEGIN"),
        execute_item(a, b"1", tag="INSERT 0 1"),
        execute_item("COMMIT", tag="COMMIT"),
        in_transaction=True,
    )
    assert s.server(answered("BEGIN"), answered("INSERT 0 1"), answered("COMMIT")) == [committed]
    # The implicit transaction after the COMMIT fails: it is dropped whole.
    assert s.server(answered("INSERT 0 1"), PARSE_OK, BIND_OK, NO_DATA, error(), rfq()) == []
    assert s.units == [committed]


# ----------------------------------------------------------------------- COPY


def test_copy_from_stdin_is_one_copy_item_with_the_chunks() -> None:
    s = Session()
    sql = "COPY t (a, b) FROM STDIN"
    s.client(messages.query(sql))
    assert s.server(msg(b"G", pack("!bhhh", 0, 2, 0, 0))) == []
    s.client(messages.copy_data(b"1\tone\n"), messages.copy_data(b"2\ttwo\n"), messages.COPY_DONE)
    assert s.server(cc("COPY 2")) == []
    assert s.server(rfq()) == [
        unit(
            1,
            Item(ItemKind.COPY, sql, copy_data=[b"1\tone\n", b"2\ttwo\n"], tags=["COPY 2"]),
            in_transaction=False,
        )
    ]


def test_failed_copy_is_dropped() -> None:
    s = Session()
    s.client(messages.query("COPY t FROM STDIN"))
    s.server(msg(b"G", pack("!bh", 0, 0)))
    s.client(messages.copy_data(b"oops\n"), messages.COPY_DONE)
    assert s.server(error("22P04", "missing data for column"), rfq()) == []
    assert s.units == []


# ----------------------------------------------------------------------- session state


def test_set_lands_in_the_prelude_and_reset_all_clears_it() -> None:
    s = Session()
    set_path = "SET search_path TO app, public"
    write = "INSERT INTO t VALUES (1)"
    assert s.simple(set_path, cc("SET"), PARAM_STATUS, rfq()) == [
        unit(1, query_item(set_path, "SET"), in_transaction=False)
    ]
    assert s.rec.prelude == [set_path]
    assert s.simple(write, cc("INSERT 0 1"), rfq()) == [
        unit(2, query_item(write, "INSERT 0 1"), in_transaction=False, prelude=(set_path,))
    ]
    assert s.simple("RESET ALL", cc("RESET"), rfq()) == [
        unit(3, query_item("RESET ALL", "RESET"), in_transaction=False, prelude=(set_path,))
    ]
    assert s.rec.prelude == []
    assert s.simple(write, cc("INSERT 0 1"), rfq()) == [
        unit(4, query_item(write, "INSERT 0 1"), in_transaction=False)
    ]


def test_prelude_keeps_the_latest_setting_of_each_variable_and_other_state() -> None:
    s = Session()
    for sql in (
        "SET search_path = a",
        "PREPARE q AS SELECT 1",
        "SET TimeZone TO 'UTC'",
        "set SESSION search_path=b",
        "SET datestyle = ISO",
        "RESET timezone",
    ):
        s.simple(sql, cc("RESET" if sql.startswith("RESET") else "SET"), rfq())
    for i in range(100):  # a long session does not push old state out
        s.simple(f"SET work_mem = '{i}MB'", cc("SET"), rfq())
    assert s.rec.prelude == [
        "PREPARE q AS SELECT 1",
        "set SESSION search_path=b",
        "SET datestyle = ISO",
        "SET work_mem = '99MB'",
    ]


def test_set_local_does_not_land_in_the_prelude() -> None:
    s = Session()
    set_local = "SET LOCAL work_mem = '64MB'"
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple(set_local, cc("SET"), rfq(b"T"))
    s.simple("UPDATE t SET n = 1", cc("UPDATE 1"), rfq(b"T"))
    assert s.simple("COMMIT", cc("COMMIT"), rfq()) == [
        unit(
            1,
            query_item("BEGIN", "BEGIN"),
            query_item(set_local, "SET"),
            query_item("UPDATE t SET n = 1", "UPDATE 1"),
            query_item("COMMIT", "COMMIT"),
            in_transaction=True,
        )
    ]
    assert s.rec.prelude == []


def test_set_inside_a_transaction_is_not_in_the_prelude_of_that_transaction() -> None:
    # The prelude is what is in force when the unit starts: replayed on a fresh
    # connection, the INSERT before the SET must still see the old search_path.
    s = Session()
    set_path = "SET search_path TO other"
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    s.simple(set_path, cc("SET"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (2)", cc("INSERT 0 1"), rfq(b"T"))
    (u,) = s.simple("COMMIT", cc("COMMIT"), rfq())
    assert u.prelude == ()
    assert s.rec.prelude == [set_path]


def test_set_inside_a_rolled_back_transaction_is_undone() -> None:
    # PostgreSQL reverts a SET made in a transaction that rolls back.
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("SET search_path TO other", cc("SET"), rfq(b"T"))
    assert s.simple("ROLLBACK", cc("ROLLBACK"), rfq()) == []
    assert s.rec.prelude == []
    write = "INSERT INTO t VALUES (1)"
    assert s.simple(write, cc("INSERT 0 1"), rfq()) == [
        unit(1, query_item(write, "INSERT 0 1"), in_transaction=False)
    ]


def test_extended_set_lands_in_the_prelude() -> None:
    s = Session()
    sql = "SET application_name = 'billing'"
    s.client(extended(sql), messages.SYNC)
    assert s.server(answered("SET"), PARAM_STATUS, rfq()) == [
        unit(1, execute_item(sql, tag="SET"), in_transaction=False)
    ]
    assert s.rec.prelude == [sql]


# ----------------------------------------------------------------------- mirroring off


def test_mirroring_off_emits_nothing() -> None:
    s = Session(mirroring=False)
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq())
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("UPDATE t SET n = 2", cc("UPDATE 1"), rfq(b"T"))
    s.simple("COMMIT", cc("COMMIT"), rfq())
    s.client(extended(UPDATE, b"1", b"2"), messages.SYNC)
    s.server(answered("UPDATE 1", b"I"))
    assert s.units == []


def parsed(data: bytes) -> ev.FrontendEvent:
    """The one event ``data`` holds, parsed after a StartupMessage."""
    p = FrontendParser()
    p.feed(messages.startup_message({"user": "app"}))
    (e,) = p.feed(data)
    return e


def test_requests_report_their_statement_kind_even_when_not_mirroring() -> None:
    rec = Recorder(SESSION, lambda u: None)
    update = parsed(messages.query("UPDATE t SET n = 1"))
    assert isinstance(update, ev.Query)
    assert rec.query(update) == (Kind.WRITE, None)
    rec.mirroring = True
    assert rec.query(update) == (
        Kind.WRITE,
        (Item(ItemKind.QUERY, "UPDATE t SET n = 1"), Kind.WRITE),
    )
    select = parsed(messages.query("SELECT 1"))
    assert isinstance(select, ev.Query)
    assert rec.query(select) == (Kind.READ, None)


def test_execute_of_an_unbound_portal_has_no_token() -> None:
    rec = Recorder(SESSION, lambda u: None)
    rec.mirroring = True
    execute = parsed(messages.EXECUTE_UNNAMED_ALL)
    assert isinstance(execute, ev.Execute)
    assert rec.execute(execute) == (Kind.WRITE, None)


def test_connection_lost_while_idle_in_transaction_drops_it() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    assert s.rec.connection_lost([], idle=False) is None
    # Nothing was in flight: the store rolled it back; the next session
    # activity starts clean.
    write = "INSERT INTO t VALUES (2)"
    assert s.simple(write, cc("INSERT 0 1"), rfq()) == [
        unit(1, query_item(write, "INSERT 0 1"), in_transaction=False)
    ]


def test_connection_lost_with_a_commit_in_flight_keeps_an_in_doubt_unit() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    _, commit = s.rec.query(ev.Query(messages.query("COMMIT"), "COMMIT"))
    # The COMMIT was sent, its answer never came: it may have committed.
    assert s.rec.connection_lost([(Q, commit)], idle=False) == unit(
        1,
        query_item("BEGIN", "BEGIN"),
        query_item("INSERT INTO t VALUES (1)", "INSERT 0 1"),
        query_item("COMMIT"),
        in_transaction=True,
    )
    assert s.rec.connection_lost([], idle=True) is None


def test_connection_lost_with_only_a_read_in_flight_in_a_transaction_drops_it() -> None:
    s = Session()
    s.simple("BEGIN", cc("BEGIN"), rfq(b"T"))
    s.simple("INSERT INTO t VALUES (1)", cc("INSERT 0 1"), rfq(b"T"))
    _, read = s.rec.query(ev.Query(messages.query("SELECT 1"), "SELECT 1"))
    assert read is None
    # A read cannot commit the transaction: the store rolled it back.
    assert s.rec.connection_lost([(Q, read), (S, None)], idle=False) is None


def test_connection_lost_before_the_sync_of_an_implicit_transaction_is_in_doubt() -> None:
    s = Session()
    write = "INSERT INTO t VALUES (1)"
    s.rec.parse(ev.Parse(b"", "", write, b""))
    s.rec.bind(ev.Bind(b"", "", "", b"\0\0\0\0\0\0"))
    _, token = s.rec.execute(ev.Execute(b"", "", 0))
    tracker = Tracker()
    tracker.request(E, token)
    tracker.request(S)
    for c in tracker.response(ord("C"), b"INSERT 0 1\0"):
        s.rec.complete(c)
    # The Execute is done; the Sync that commits the implicit transaction is not.
    kept = s.rec.connection_lost(tracker.in_flight(), idle=True)
    assert kept is not None
    assert [(it.sql, it.tags) for it in kept.items] == [(write, ["INSERT 0 1"])]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("ROLLBACK TO SAVEPOINT s", True),
        ("rollback to s", True),
        ("ROLLBACK WORK TO SAVEPOINT s", True),
        ("ROLLBACK TRANSACTION TO s;", True),
        ("/* undo */ ROLLBACK\n  TO s", True),
        ("ROLLBACK", False),
        ("ROLLBACK WORK", False),
        ("ROLLBACK AND CHAIN", False),
        ("ABORT", False),
        ("-- to\nROLLBACK", False),
    ],
)
def test_rollback_to_is_told_from_rollback(sql: str, expected: bool) -> None:
    assert _is_rollback_to(sql) is expected


def test_extended_rollback_to_in_a_pipeline_keeps_the_transaction() -> None:
    s = Session()
    a = "INSERT INTO t VALUES ($1)"
    s.client(
        extended(BEGIN),
        extended(a, b"1"),
        extended("SAVEPOINT s"),
        extended(a, b"2"),
        extended("ROLLBACK TO s"),
        extended("COMMIT"),
        messages.SYNC,
    )
    assert (
        s.server(
            answered("BEGIN"),
            answered("INSERT 0 1"),
            answered("SAVEPOINT"),
            answered("INSERT 0 1"),
            answered("ROLLBACK"),
        )
        == []
    )
    assert s.server(answered("COMMIT")) == [
        unit(
            1,
            execute_item(BEGIN, tag="BEGIN"),
            execute_item(a, b"1", tag="INSERT 0 1"),
            execute_item("SAVEPOINT s", tag="SAVEPOINT"),
            execute_item(a, b"2", tag="INSERT 0 1"),
            execute_item("ROLLBACK TO s", tag="ROLLBACK"),
            execute_item("COMMIT", tag="COMMIT"),
            in_transaction=True,
        )
    ]
    assert s.server(rfq()) == []
