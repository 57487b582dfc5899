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

import time
from collections.abc import Callable
from typing import Any

from proxy.classify import Kind, _next_word, classify
from proxy.mirror.unit import Item, ItemKind, Unit
from proxy.wire.pg import Completion
from proxy.wire.pg import events as ev
from proxy.wire.pg._tracker import E, Q

_PRELUDE_MAX = 64
_IDLE = ord("I")

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
    )

    def __init__(
        self,
        session_id: int,
        emit: Callable[[Unit], None],
        on_unmirrorable: Callable[[str, str], None] | None = None,
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

    # -- requests (client -> authoritative store) --------------------------------

    def query(self, e: ev.Query) -> tuple[Kind, Token]:
        kind = classify(e.sql)
        if kind is Kind.READ or not self.mirroring:
            return kind, None
        return kind, (Item(ItemKind.QUERY, e.sql), kind)

    def parse(self, e: ev.Parse) -> None:
        self._statements[e.name] = (e.sql, e.body, classify(e.sql))

    def bind(self, e: ev.Bind) -> None:
        st = self._statements.get(e.statement)
        if st is not None:
            self._portals[e.portal] = (st[0], st[1], e.body, st[2])
        else:
            self._portals.pop(e.portal, None)
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
        self._executed[e.portal] = item
        return kind, (item, kind, e.max_rows)

    def close(self, e: ev.Close) -> None:
        if e.target == "S":
            self._statements.pop(e.name, None)
        else:
            self._portals.pop(e.name, None)
            self._executed.pop(e.name, None)

    def copy_data(self, token: Any, e: ev.CopyData) -> None:
        """CopyData the client streams while the store is in COPY FROM STDIN."""
        if token is not None:
            item: Item = token[0]
            item.kind = ItemKind.COPY
            item.copy_data.append(e.data)

    # -- answers (authoritative store -> client) -----------------------------------

    def complete(self, c: Completion) -> None:
        req = c.request
        token: Token = req.token
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
                if not self._items:
                    self._prelude_at_start = tuple(self.prelude)
                    # Units committed before now must reach the mirror before this one.
                    self._after = self.order_now()
                self._items.append((item, kind))
                if kind is Kind.SESSION:
                    self._remember_session_state(item.sql)
                if req.kind == E and req.tags:
                    tag = req.tags[-1]
                    if tag == "COMMIT":
                        self._close_unit(committed=True)
                    elif tag == "ROLLBACK" and not _is_rollback_to(item.sql):
                        self._close_unit(committed=False)
            elif req.kind == Q and "COMMIT" in req.tags and self.on_unmirrorable:
                # A multi-statement query committed part of its work and then failed.
                self.on_unmirrorable(item.sql, "partially committed multi-statement query")
        if c.status == _IDLE and self._items:
            committed = not c.failed_batch and not self._ends_in_rollback()
            self._close_unit(committed)

    def _ends_in_rollback(self) -> bool:
        """The transaction ended in ROLLBACK (or in a COMMIT the store turned into
        one): nothing of it persisted, unless a COMMIT inside a multi-statement
        query made part of the unit durable first."""
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
        if not committed and items:
            # The store rolled back the SETs made in the unit too.
            self.prelude[:] = self._prelude_at_start
        if not committed or not items:
            return
        self._seq += 1
        first = items[0][0]
        in_txn = len(items) > 1 or (
            bool(first.tags) and first.tags[0] in ("BEGIN", "START TRANSACTION")
        )
        self._emit(
            Unit(
                session_id=self.session_id,
                seq=self._seq,
                in_transaction=in_txn,
                prelude=self._prelude_at_start,
                items=[it for it, _ in items],
                committed_at=self._clock(),
                after=self._after,
            )
        )

    def _remember_session_state(self, sql: str) -> None:
        head = " ".join(sql.lower().split()[:2])
        if head in ("reset all", "discard all", "reset all;", "discard all;"):
            self.prelude.clear()
            return
        if head.startswith("set local") or head.startswith("set transaction"):
            return
        self.prelude.append(sql)
        if len(self.prelude) > _PRELUDE_MAX:
            del self.prelude[0]

    def discard_open(self) -> None:
        """The client went away mid-transaction: the store rolls it back."""
        self._items = []
        self._rows_sent.clear()
