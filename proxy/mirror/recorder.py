"""Builds mirror units from what a client session did on the authoritative store.

How this works: the relay hands every frontend request to the recorder, which
returns a token (an ``Item`` under construction, or None for reads and
protocol housekeeping) that the tracker carries until the authoritative store
answers.  Completed items that succeeded join the open transaction's item
list.  Transaction boundaries come from the store itself: a ReadyForQuery
with status idle closes the unit (emitted if it committed, dropped if the
store rolled it back, since the store then applied nothing); a COMMIT or
ROLLBACK tag from an extended-protocol Execute closes it mid-batch.

Only *when* the unit is handed over is decided here (after the authoritative
commit: the ``async`` consistency level); *how* it is applied is the mirror
worker's business.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

from proxy.classify import Kind, _next_word, classify
from proxy.mirror.pinning import Pinner, Plan, Unpinnable, image_items
from proxy.mirror.unit import Item, ItemKind, Unit
from proxy.wire.pg import Completion
from proxy.wire.pg import events as ev
from proxy.wire.pg._rows import parse_body
from proxy.wire.pg._tracker import E, Q, S

_SET_OR_RESET = re.compile(r"\s*(set|reset)\s+(?:session\s+)?([a-z_][\w.]*)", re.IGNORECASE)
_IDLE: Final = 0x49  # 'I': ReadyForQuery's idle status
# The COMMIT a sync unit ends with, as an extended-protocol item: the mirror
# then sends the whole unit under one Sync and gets every answer in one read.
_COMMIT_PARSE: Final = parse_body("COMMIT")
_NO_PARAMETERS: Final = b"\0\0\0\0\0\0"  # Bind: no formats, no values, text results

# Query: (item, kind).  Execute: (item, kind, row limit), where the kind is None for
# an Execute that fetches more rows from a portal already recorded (after
# PortalSuspended): the statement ran once, at its first Execute, and the rows of
# every part add up to its row count.
Token = tuple[Item, Kind] | tuple[Item, Kind | None, int] | None


def _is_rollback_to(sql: str) -> bool:
    """ROLLBACK [WORK | TRANSACTION] TO ...: tagged ROLLBACK, yet the transaction goes on."""
    word, end = _next_word(sql)
    if word != "rollback":
        return False
    word, end = _next_word(sql, end)
    if word in ("work", "transaction"):
        word, end = _next_word(sql, end)
    return word == "to"


def _setting_name(sql: str) -> str | None:
    named = _SET_OR_RESET.match(sql)
    return named.group(2).lower() if named is not None else None


def _add_rows(tags: list[str], rows: int) -> list[str]:
    """The last tag with ``rows`` more rows ("INSERT 0 0" + 500 -> "INSERT 0 500")."""
    head, _, count = tags[-1].rpartition(" ")
    if not rows or not count.isdigit():
        return tags
    return [*tags[:-1], f"{head} {int(count) + rows}"]


class Recorder:
    __slots__ = (
        "session_id",
        "_emit",
        "_statements",
        "_portals",
        "_executed",
        "_rows_sent",
        "_items",
        "prelude",
        "_prelude_at_start",
        "_seq",
        "_clock",
        "on_unmirrorable",
        "mirroring",
        "order_now",
        "_after",
        "_taken",
        "on_commit_failed",
        "pinner",
        "_pins",
        "_portal_pins",
        "on_unpinnable",
    )

    def __init__(
        self,
        session_id: int,
        emit: Callable[[Unit], None],
        on_unmirrorable: Callable[[Unit, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self._emit = emit
        self._statements: dict[str, tuple[str, bytes, Kind]] = {}
        self._portals: dict[str, tuple[str, bytes, bytes, Kind]] = {}
        self._executed: dict[str, Item] = {}  # portal -> its item, once executed
        self._rows_sent: dict[int, int] = {}  # id(item) -> rows of its suspended parts
        self._items: list[tuple[Item, Kind]] = []
        self.prelude: list[str] = []
        self._prelude_at_start: tuple[str, ...] = ()  # in force when the open unit began
        self._seq = 0
        self._clock = clock
        self.on_unmirrorable = on_unmirrorable
        self.mirroring = False  # build units only when the mode mirrors writes
        self.order_now: Callable[[], int] = lambda: 0  # the mirror's last commit order
        self._after = 0
        # sync consistency: the open transaction's unit, already handed to the mirror
        # before the authoritative commit was forwarded (see ``take_open_unit``).
        self._taken: Unit | None = None
        self.on_commit_failed: Callable[[Unit], None] | None = None
        # Value pinning (pinning.py): plans per statement name and per portal (with
        # the format the pinned values come back in).
        self.pinner: Pinner | None = None
        self._pins: dict[str, Plan | Unpinnable | None] = {}
        self._portal_pins: dict[str, tuple[Plan | Unpinnable, int]] = {}
        self.on_unpinnable: Callable[[Unit, str], None] | None = None

    # -- requests (client -> authoritative store) --------------------------------

    def query(self, e: ev.Query) -> tuple[Kind, Token]:
        kind = classify(e.sql)
        if kind is Kind.READ or not self.mirroring:
            return kind, None
        item = Item(ItemKind.QUERY, e.sql)
        if self.pinner is not None and (kind is Kind.WRITE or kind is Kind.DDL):
            self._pin(item, self.pinner.plan(e.sql), 0)
        return kind, (item, kind)

    def parse(self, e: ev.Parse) -> None:
        kind = classify(e.sql)
        self._statements[e.name] = (e.sql, e.body, kind)
        if self.pinner is not None and (kind is Kind.WRITE or kind is Kind.DDL):
            self._pins[e.name] = self.pinner.plan(e.sql)
        else:
            self._pins.pop(e.name, None)

    def learn_statement(self, name: str, sql: str, param_oids: list[int]) -> None:
        """A statement the client prepared before this session mirrored."""
        self.parse(ev.Parse(b"", name, sql, parse_body(sql, oids=param_oids)))
        if isinstance(self._pins.get(name), Plan):
            # Prepared without the pinning RETURNING: its generated values cannot be
            # captured; reported at each use rather than guessed.
            self._pins[name] = Unpinnable("statement prepared before the session mirrored")

    @property
    def statements(self) -> dict[str, tuple[str, bytes, Kind]]:
        """Prepared statements: name -> (sql, Parse body after the name, kind)."""
        return self._statements

    def statement_body(self, name: str) -> bytes | None:
        st = self._statements.get(name)
        return st[1] if st is not None else None

    def replan(self) -> None:
        """The pinner changed (the mirror runs the other way): plan every statement
        again, as the proxy prepared them on the new authoritative connection."""
        pinner = self.pinner
        self._portals.clear()
        self._portal_pins.clear()
        self._executed.clear()
        for name, (sql, _, kind) in self._statements.items():
            if pinner is not None and (kind is Kind.WRITE or kind is Kind.DDL):
                self._pins[name] = pinner.plan(sql)
            else:
                self._pins.pop(name, None)

    def statement_pin(self, name: str) -> Plan | Unpinnable | None:
        return self._pins.get(name)

    def portal_pin(self, portal: str) -> Plan | Unpinnable | None:
        found = self._portal_pins.get(portal)
        return found[0] if found is not None else None

    def bind(self, e: ev.Bind, fmt: int = 0) -> None:
        """``fmt``: the result format the pinned columns come back in, if pinned."""
        st = self._statements.get(e.statement)
        if st is not None:
            self._portals[e.portal] = (st[0], st[1], e.body, st[2])
            pin = self._pins.get(e.statement)
            if pin is not None:
                self._portal_pins[e.portal] = (pin, fmt)
            else:
                self._portal_pins.pop(e.portal, None)
        else:
            self._portals.pop(e.portal, None)
            self._portal_pins.pop(e.portal, None)
        self._executed.pop(e.portal, None)

    def execute(self, e: ev.Execute) -> tuple[Kind, Token]:
        p = self._portals.get(e.portal)
        if p is None:
            return Kind.WRITE, None  # the Bind failed; so will this Execute
        sql, parse_body, bind_body, kind = p
        if kind is Kind.READ or not self.mirroring:
            return kind, None
        item = self._executed.get(e.portal)
        if item is not None:
            return kind, (item, None, e.max_rows)
        item = Item(ItemKind.EXECUTE, sql, parse_body=parse_body, bind_body=bind_body)
        pinned = self._portal_pins.get(e.portal)
        if pinned is not None:
            self._pin(item, *pinned)
        self._executed[e.portal] = item
        return kind, (item, kind, e.max_rows)

    def portal_read(self, portal: str) -> tuple[str, bytes, bytes] | None:
        """(sql, Parse body, Bind body) of a portal bound to a read, else None."""
        p = self._portals.get(portal)
        if p is None or p[3] is not Kind.READ:
            return None
        return p[0], p[1], p[2]

    def portal_sql(self, portal: str) -> str | None:
        p = self._portals.get(portal)
        return p[0] if p is not None else None

    def has_open_writes(self) -> bool:
        return any(kind is Kind.WRITE or kind is Kind.DDL for _, kind in self._items)

    def take_open_unit(self, commit: bool) -> Unit | None:
        """sync consistency: the open transaction as a unit, before it commits.

        ``commit`` adds the COMMIT the mirror must run (an explicit transaction;
        an implicit one commits at the mirror's own Sync or Query end).  The unit
        is remembered until the authoritative store answers the commit: if that
        fails, ``on_commit_failed`` reports the unit the mirror already holds.
        """
        if not self.has_open_writes():
            return None
        items = self._items
        self._items = []
        unit = self._unit(items)
        if commit:
            unit.items.append(
                Item(ItemKind.EXECUTE, "COMMIT", _COMMIT_PARSE, _NO_PARAMETERS, tags=["COMMIT"])
            )
            unit.in_transaction = True
        self._taken = unit
        return unit

    def end_taken(self, committed: bool) -> None:
        """The proxy's own COMMIT/ROLLBACK of a wrapped autocommit query was answered."""
        self._close_unit(committed)

    def close(self, e: ev.Close) -> None:
        if e.target == "S":
            self._statements.pop(e.name, None)
            self._pins.pop(e.name, None)
        else:
            self._portals.pop(e.name, None)
            self._portal_pins.pop(e.name, None)
            self._executed.pop(e.name, None)

    @staticmethod
    def _pin(item: Item, pin: Plan | Unpinnable | None, fmt: int) -> None:
        item.pin = pin
        if isinstance(pin, Plan):
            item.pin_rows = []
            item.pin_fmt = fmt

    def copy_data(self, token: Any, e: ev.CopyData) -> None:
        """CopyData the client streams while the store is in COPY FROM STDIN."""
        if token is not None:
            item: Item = token[0]
            item.kind = ItemKind.COPY
            item.copy_data.append(e.data)

    # -- answers (authoritative store -> client) -----------------------------------

    def complete(self, c: Completion) -> None:
        req = c.request
        token: Any = req.token  # also the proxy's own requests (PinDescribe...)
        if req.kind in (Q, E) and token is not None:
            item, kind = token[0], token[1]
            limit = token[2] if len(token) == 3 else 0
            if req.kind == E and limit and req.error is None and not req.skipped and not req.tags:
                # PortalSuspended: exactly ``limit`` rows went out in this part.
                self._rows_sent[id(item)] = self._rows_sent.get(id(item), 0) + limit
            if kind is None:
                if req.error is None and req.tags:  # the last part: count every part
                    item.tags = _add_rows(req.tags, self._rows_sent.pop(id(item), 0))
            elif req.error is None and not req.skipped:
                item.tags = req.tags
                self._add(item, kind)
                if kind is Kind.SESSION:
                    self._remember_session_state(item.sql)
                if req.kind == E and req.tags:
                    tag = req.tags[-1]
                    if tag == "COMMIT":
                        self._close_unit(committed=True)
                    elif tag == "ROLLBACK" and not _is_rollback_to(item.sql):
                        self._close_unit(committed=False)
            elif req.kind == Q and "COMMIT" in req.tags and self.on_unmirrorable:
                # A multi-statement query committed part of its work and then failed:
                # what committed cannot be told apart, so the unit is kept for repair.
                item.tags = req.tags
                self._add(item, kind)
                kept = self._unit(self._items)
                self._items = []
                self.on_unmirrorable(kept, "partially committed multi-statement query")
        if c.status == _IDLE and (self._items or self._taken is not None):
            committed = not c.failed_batch and not self._ends_in_rollback()
            self._close_unit(committed)

    def _add(self, item: Item, kind: Kind) -> None:
        if not self._items:
            self._prelude_at_start = tuple(self.prelude)
            # Units committed before now must reach the mirror before this one.
            self._after = self.order_now()
        self._items.append((item, kind))

    def _ends_in_rollback(self) -> bool:
        """The transaction ended in ROLLBACK (or in a COMMIT the store turned into
        one): nothing of it persisted, unless a COMMIT inside a multi-statement
        query made part of the unit durable first."""
        if not self._items:
            return False
        last = self._items[-1][0]
        return (
            bool(last.tags)
            and last.tags[-1] == "ROLLBACK"
            and not any("COMMIT" in it.tags for it, _ in self._items)
        )

    def _close_unit(self, committed: bool) -> None:
        items = self._items
        self._items = []
        self._rows_sent.clear()
        taken, self._taken = self._taken, None
        if taken is not None:
            # The mirror applied (and committed) the transaction before the store's
            # commit; what came after the take is only the COMMIT itself.
            if not committed and self.on_commit_failed is not None:
                self.on_commit_failed(taken)
            return
        if not committed and items:
            # The store rolled back the SETs made in the unit too.
            self.prelude[:] = self._prelude_at_start
        if committed and items:
            self._emit(self._unit(items))

    def _unit(self, items: list[tuple[Item, Kind]]) -> Unit:
        self._seq += 1
        first = items[0][0]
        in_txn = len(items) > 1 or (
            bool(first.tags) and first.tags[0] in ("BEGIN", "START TRANSACTION")
        )
        flat, unpinnable = self._pinned_items([it for it, _ in items])
        unit = Unit(
            session_id=self.session_id,
            seq=self._seq,
            in_transaction=in_txn,
            prelude=self._prelude_at_start,
            items=flat,
            committed_at=self._clock(),
            after=self._after,
        )
        if unpinnable and self.on_unpinnable is not None:
            self.on_unpinnable(unit, unpinnable)
        return unit

    def _pinned_items(self, items: list[Item]) -> tuple[list[Item], str]:
        """Pinned statements become the statements writing the rows the store
        returned; what could not be pinned stays as sent, and says why."""
        if self.pinner is None:
            return items, ""
        out: list[Item] = []
        why = ""
        for it in items:
            pin = it.pin
            if pin is None:
                out.append(it)
            elif isinstance(pin, Unpinnable):
                why = pin.reason
                out.append(it)
            else:
                table = self.pinner.table(pin)
                rows = it.pin_rows or []
                if table is None or any(len(r) != len(table.columns) for r in rows):
                    why = "the table changed under the statement"
                    out.append(it)
                else:
                    out.extend(image_items(pin, table, rows, it.pin_fmt))
        return out, why

    def _remember_session_state(self, sql: str) -> None:
        head = " ".join(sql.lower().split()[:2]).rstrip(";")
        if head in ("reset all", "discard all"):
            self.prelude.clear()
            return
        if head.startswith(("set local", "set transaction")):
            return
        named = _SET_OR_RESET.match(sql)
        if named is not None:
            # The latest SET of a variable replaces the earlier ones (and RESET
            # removes them): the prelude is the session's state, not its history.
            name = named.group(2).lower()
            self.prelude[:] = [old for old in self.prelude if _setting_name(old) != name]
            if named.group(1).lower() == "reset":
                return
        self.prelude.append(sql)

    def connection_lost(self, in_flight: list[tuple[int, Any]], idle: bool) -> Unit | None:
        """The authoritative connection broke; ``idle`` is the last known status.

        If nothing in flight could have committed, the store rolled the open
        transaction back: it is dropped.  A write or transaction-control
        statement in flight, or a Sync closing an implicit transaction of
        completed writes, may have committed before the connection broke: the
        open items and the writes in flight are returned as an in-doubt unit,
        to be kept for repair rather than guessed either way.
        """
        items = self._items
        self._items = []
        self._rows_sent.clear()
        taken, self._taken = self._taken, None
        if taken is not None:
            # Applied on the mirror; the authoritative commit may or may not have
            # happened: in doubt, whole.
            return taken
        writes = [
            (tok[0], tok[1])
            for _, tok in in_flight
            if type(tok) is tuple and tok[1] is not None  # not the proxy's own requests
        ]
        sync_commits = idle and items and any(kind == S for kind, _ in in_flight)
        if not writes and not sync_commits:
            return None
        if not items:
            self._prelude_at_start = tuple(self.prelude)
            self._after = self.order_now()
        return self._unit(items + writes)
