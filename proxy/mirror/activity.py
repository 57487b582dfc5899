"""Which tables the proxy has written, as counters: the shadow reads' witness.

How this works: every unit handed to a mirror (either direction) bumps a
counter per table it writes, by bare table name.  A shadow read notes the
counters of the tables it reads when it is sampled; if both stores still
answer differently after the re-checks, the counters say whether the proxy
wrote any of those tables meanwhile.  If it did, the difference may be a
write in flight between the two stores (with lock-step, the new store
commits a moment before the old one): the read is counted as inconclusive,
not reported as a divergence.  If nothing was written through the proxy,
the stores really differ.  Bare names err on the side of "written" (two
schemas with the same table name share a counter).
"""

from __future__ import annotations

from proxy.classify import tables_of
from proxy.mirror.unit import Unit


class TableActivity:
    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes: dict[str, int] = {}

    def note(self, unit: Unit) -> None:
        writes = self.writes
        for item in unit.items:
            for table in tables_of(item.sql):
                name = table.rpartition(".")[2].strip('"')
                writes[name] = writes.get(name, 0) + 1

    def snapshot(self, tables: tuple[str, ...]) -> tuple[int, ...]:
        writes = self.writes
        return tuple(writes.get(t, 0) for t in tables)


ACTIVITY = TableActivity()  # one per process: both mirrors note into it
