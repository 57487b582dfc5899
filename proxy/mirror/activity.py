"""Which tables the proxy has written, as counters: the shadow reads' witness.

How this works: every unit handed to a mirror (either direction) bumps a
sequence number and records it as the last write of each table it writes, by
bare table name.  A shadow read notes the sequence number when it is sampled;
if both stores still answer differently after the re-checks, the tables the
statement reads (parsed only then) say whether the proxy wrote any of them
meanwhile.  If it did, the difference may be a
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
    __slots__ = ("seq", "writes")

    def __init__(self) -> None:
        self.seq = 0  # units noted so far
        self.writes: dict[str, int] = {}  # table -> seq of the last unit writing it

    def note(self, unit: Unit) -> None:
        self.seq += 1
        seq = self.seq
        writes = self.writes
        for item in unit.items:
            for table in tables_of(item.sql):
                writes[table.rpartition(".")[2].strip('"')] = seq

    def written_since(self, seq: int, tables: tuple[str, ...]) -> bool:
        writes = self.writes
        return any(writes.get(t, 0) > seq for t in tables)


ACTIVITY = TableActivity()  # one per process: both mirrors note into it
