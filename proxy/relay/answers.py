"""The store's answers read message by message, for the requests the proxy changed.

How this works: most of the time the session relays the store's bytes as they
come and a scanner only picks out the messages that end requests.  When an
answer must be looked at or changed -- the rows of a pinned write (the
client's columns go out, the table's are kept for the mirror), the
RowDescription of a pinned statement, a sampled read's rows for its shadow
digest, the proxy's own BEGIN/COMMIT around a wrapped autocommit query, the
proxy's own questions -- the lock-step takes the stream over from the
scanner mid-message (``take_state``) and every message goes through
``AnswerFilter.upstream`` until nothing special is left in flight; then the
scanner takes the stream back where the filter stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.mirror.pinning import MARKER, Plan
from proxy.wire.pg import OUTCOMES, Completion, Request, split_messages
from proxy.wire.pg._rows import NO_DATA, data_row_split, data_row_values, row_description_cut
from proxy.wire.pg._tracker import D

if TYPE_CHECKING:
    from proxy.relay.client import ClientSession
    from proxy.relay.shadow import SessionShadow, ShadowRead

# Module constants are Final literals: compiled (setup.py), each use is the
# number itself, not a lookup in the module's dict.
# The lock-step's states (lockstep.py); the filter needs to know ENDING.
FLOWING: Final = 0
ANSWERS: Final = 1
MIRROR: Final = 2
WRAPPED: Final = 3
ENDING: Final = 4
CATALOG: Final = 5
LEARNING: Final = 6
ROUTED: Final = 7
# A client session's phases (client.py; switch.py reads them too).
STARTUP: Final = 0
CONNECTING: Final = 1
AUTH: Final = 2
READY: Final = 3
CLOSED: Final = 4
_IDLE: Final = 0x49  # 'I': ReadyForQuery's idle status
_ASYNC: Final = frozenset(b"NAS")  # notices, notifications, parameter status: always relayed


class Internal:
    """Token of a request the proxy itself sent: its answers are not the client's."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


BEGIN_TOKEN: Final = Internal("begin")
END_TOKEN: Final = Internal("end")
# A session that starts mirroring mid-life (old-only -> dual-write) learns what it
# did before from the store: its prepared statements and its SETs.
STATEMENTS_TOKEN: Final = Internal("statements")
SETTINGS_TOKEN: Final = Internal("settings")


class PinDescribe(Internal):
    """Token of a Describe of a pinned statement: its RowDescription is cut."""

    __slots__ = ("plan",)

    def __init__(self, plan: Plan) -> None:
        super().__init__("describe")
        self.plan = plan


class AnswerFilter:
    """Mixed into LockStep, whose slots hold this state."""

    # The filter's own state (LockStep.__init__ sets it).
    __slots__ = ("filtering", "_fbuf", "_pre", "_raw_skip", "_special", "_held_tag", "_learned")
    filtering: bool  # answers read message by message
    _fbuf: bytes  # a partial message
    _pre: int  # bytes at the start of _fbuf already relayed (scanner hand-over)
    _raw_skip: int  # bytes of a message already partly relayed, to pass on as is
    _special: set[int]  # ids of requests whose answers are changed or looked at
    _held_tag: bytes | None  # a wrapped query's last CommandComplete, until its commit
    _learned: list[list[bytes | None]]  # rows of the proxy's own questions
    # The lock-step's, read here.
    s: ClientSession
    state: int
    shadow: SessionShadow | None
    shadows: dict[int, ShadowRead]
    _wrapped: Request | None

    def upstream(self, data: bytes) -> None:
        """The store's answers while some need rewriting, one message at a time."""
        s = self.s
        out: list[bytes] = []
        if self._raw_skip:  # the rest of a message the scanner had started to relay
            n = min(self._raw_skip, len(data))
            out.append(data[:n])
            self._raw_skip -= n
            data = data[n:]
        msgs, self._fbuf = split_messages(self._fbuf + data)
        tracker = s.tracker
        for t, raw in msgs:
            if self._pre:  # its first bytes went out before the hand-over
                out.append(raw[self._pre :])
                self._pre = 0
                self._track(t, raw)
                continue
            head = tracker.head
            if head is None or t in _ASYNC:
                out.append(raw)
            else:
                self._relay(t, raw, head, out)
            self._track(t, raw)
        if out and s.transport is not None:
            s.transport.write(b"".join(out))
        if not self._special and self._wrapped is None and self.state != ENDING:
            # Nothing left to rewrite: the scanner takes the stream back.
            if self._fbuf[self._pre :] and s.transport is not None:
                s.transport.write(self._fbuf[self._pre :])
            s.scanner.give_state(self._fbuf, self._raw_skip)
            self._fbuf = b""
            self._pre = self._raw_skip = 0
            self.filtering = False

    def _track(self, t: int, raw: bytes) -> None:
        tracker = self.s.tracker
        head = tracker.head
        if t in OUTCOMES or (head is not None and head.kind == D and t in b"Tn"):
            special = self._special
            for c in tracker.response(t, raw[5:]):
                if special:
                    special.discard(id(c.request))
                self.s.completed(c)

    def shadow_done(self, c: Completion) -> None:
        sr = self.shadows.pop(id(c.request), None)
        if sr is None or self.shadow is None:
            return
        s = self.s
        if not self.shadows:
            s.scanner.digest_rows(False)
        if c.request.error is not None or c.request.skipped:
            self.shadow.drop()
            return
        self.shadow.start(sr, tuple(s.recorder.prelude))

    def _relay(self, t: int, raw: bytes, head: Request, out: list[bytes]) -> None:
        """One answer to ``head``: relayed, rewritten or hidden."""
        if self.shadows:
            sr = self.shadows.get(id(head))
            if sr is not None:  # looked at, relayed as it is
                if t == 0x44:
                    sr.digest.add(raw[5:])
                elif t == 0x54:
                    sr.digest.describe(raw[5:])
                out.append(raw)
                return
        token = head.token
        if token is BEGIN_TOKEN:
            return
        if token is STATEMENTS_TOKEN or token is SETTINGS_TOKEN:
            if t == 0x44:
                self._learned.append(data_row_values(raw[5:]))
            return
        if token is END_TOKEN:
            if t == 0x43:  # COMMIT/ROLLBACK: the client's own tag goes out instead
                if self._held_tag is not None and raw[5:11] == b"COMMIT":
                    out.append(self._held_tag)
                self._held_tag = None
                return
            if t == 0x45:
                self._held_tag = None  # the commit failed: no CommandComplete
            out.append(raw)
            return
        if type(token) is PinDescribe:
            if t == 0x54:
                _, cut = row_description_cut(raw[5:], MARKER)
                out.append(cut if token.plan.client_returns else NO_DATA)
            else:
                out.append(raw)
            return
        if type(token) is tuple and isinstance(token[0].pin, Plan):
            item = token[0]
            plan = item.pin
            if t == 0x44:  # DataRow: the client's columns out, the table's kept
                body = raw[5:]
                keep = plan.keep(int.from_bytes(body[:2], "big"))
                client_row, image = data_row_split(body, keep)
                item.pin_rows.append(image)
                if plan.client_returns:
                    out.append(client_row)
                return
            if t == 0x54:
                _, cut = row_description_cut(raw[5:], MARKER)
                if plan.client_returns:
                    out.append(cut)
                return
        if head is self._wrapped:
            if t == 0x5A:
                if raw[5] == _IDLE:
                    out.append(raw)
                return
            if t == 0x43:  # the last tag waits for the commit's outcome
                if self._held_tag is not None:
                    out.append(self._held_tag)
                self._held_tag = raw
                return
            if self._held_tag is not None:
                out.append(self._held_tag)
                self._held_tag = None
        out.append(raw)
