"""The demo's workload: concurrent asyncpg clients through the proxy."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from proxy.demo._common import CLIENT_ID_SPAN, SEED_CUSTOMERS, SEED_ORDERS, STATUSES
from proxy.demo.stores import _connect


class _RollBack(Exception):
    """Raised inside ``conn.transaction()`` to roll it back on purpose."""


@dataclass
class WorkloadStats:
    reads: int = 0
    writes: int = 0
    committed: int = 0  # explicit transactions committed
    autocommit_writes: int = 0  # write statements (or multi-statement queries) on their own
    rolled_back: int = 0  # explicit transactions rolled back on purpose
    failed_on_purpose: int = 0  # statements that failed as intended (unique violations)
    prepared_reuses: int = 0
    errors: list[str] = field(default_factory=list)  # anything unexpected
    elapsed: float = 0.0

    def add(self, other: WorkloadStats) -> None:
        self.reads += other.reads
        self.writes += other.writes
        self.committed += other.committed
        self.autocommit_writes += other.autocommit_writes
        self.rolled_back += other.rolled_back
        self.failed_on_purpose += other.failed_on_purpose
        self.prepared_reuses += other.prepared_reuses
        self.errors.extend(other.errors)

    @property
    def statements(self) -> int:
        return self.reads + self.writes


class Client:
    """One application connection doing a random mix of work, through the proxy.

    Every row this client inserts gets an EXPLICIT id from the client's own range
    (customers, orders and events alike), never a serial/bigserial default: the
    proxy mirrors statements, and pinning values the authoritative store
    generates (sequence defaults) is a later feature, so a default-generated key
    could differ between the stores.  The client also only updates and deletes
    rows it inserted itself: with the ``async`` mirror, writes are ordered per
    session only, so two sessions racing on one row could reach the new store in
    another order (the design's documented limit, caught by the comparator).
    """

    def __init__(self, index: int, conn: asyncpg.Connection) -> None:
        self.index = index
        self.conn = conn
        self.rng = random.Random(1000 + index)
        base = (index + 1) * CLIENT_ID_SPAN
        self.next_customer = base
        self.next_order = base
        self.next_event = base
        self.customers: list[int] = []
        self.orders: list[int] = []
        self.stats = WorkloadStats()
        self.bump: Any = None  # the prepared statement, reused

    def _customer_id(self) -> int:
        self.next_customer += 1
        return self.next_customer

    def _order_id(self) -> int:
        self.next_order += 1
        return self.next_order

    def _event_id(self) -> int:
        self.next_event += 1
        return self.next_event

    def _any_customer(self) -> int:
        if self.customers and self.rng.random() < 0.5:
            return self.rng.choice(self.customers)
        return self.rng.randint(1, SEED_CUSTOMERS)

    def _amount(self) -> Decimal:
        return Decimal(self.rng.randint(100, 99_999)) / 100

    async def prepare(self) -> None:
        self.bump = await self.conn.prepare("UPDATE orders SET amount = amount + $1 WHERE id = $2")

    async def run(self, deadline: float) -> WorkloadStats:
        ops = [
            (self.read_order, 25),
            (self.read_aggregate, 8),
            (self.read_customer_orders, 7),
            (self.new_order, 18),
            (self.new_customer, 4),
            (self.update_status, 12),
            (self.bump_amount, 8),
            (self.delete_order, 5),
            (self.rollback_on_purpose, 5),
            (self.failing_transaction, 3),
            (self.savepoint_transaction, 3),
            (self.multi_statement_query, 2),
            (self.batch_events, 3),
            (self.copy_events, 1),
        ]
        funcs = [f for f, _ in ops]
        weights = [w for _, w in ops]
        await self.prepare()
        while time.monotonic() < deadline:
            op = self.rng.choices(funcs, weights)[0]
            try:
                await op()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self.stats.errors.append(f"client {self.index}: {op.__name__}: {exc!r}")
                if len(self.stats.errors) >= 5 or self.conn.is_closed():
                    break
        return self.stats

    # -- reads ---------------------------------------------------------------------

    async def read_order(self) -> None:
        pool = self.orders if self.orders and self.rng.random() < 0.5 else None
        oid = self.rng.choice(pool) if pool else self.rng.randint(1, SEED_ORDERS)
        await self.conn.fetchrow(
            "SELECT id, customer_id, amount, status FROM orders WHERE id = $1", oid
        )
        self.stats.reads += 1

    async def read_aggregate(self) -> None:
        await self.conn.fetch(
            "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status"
        )
        self.stats.reads += 1

    async def read_customer_orders(self) -> None:
        # A read-only transaction: BEGIN READ ONLY ... COMMIT around two reads.
        async with self.conn.transaction(readonly=True):
            cid = self._any_customer()
            await self.conn.fetchrow("SELECT name, email FROM customers WHERE id = $1", cid)
            await self.conn.fetch(
                "SELECT o.id, o.amount, count(e.id) AS events FROM orders o "
                "LEFT JOIN order_events e ON e.order_id = o.id "
                "WHERE o.customer_id = $1 GROUP BY o.id ORDER BY o.id",
                cid,
            )
        self.stats.reads += 2
        self.stats.committed += 1

    # -- writes --------------------------------------------------------------------

    async def _insert_order(self) -> int:
        oid = self._order_id()
        await self.conn.execute(
            "INSERT INTO orders (id, customer_id, amount, status) VALUES ($1, $2, $3, 'new')",
            oid,
            self._any_customer(),
            self._amount(),
        )
        await self.conn.execute(
            "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, 'created')",
            self._event_id(),
            oid,
        )
        self.stats.writes += 2
        return oid

    async def new_order(self) -> None:
        async with self.conn.transaction():
            oid = await self._insert_order()
        self.orders.append(oid)
        self.stats.committed += 1

    async def new_customer(self) -> None:
        cid = self._customer_id()
        await self.conn.execute(
            "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3)",
            cid,
            f"client {self.index} customer {cid}",
            f"c{cid}@example.org",
        )
        self.customers.append(cid)
        self.stats.writes += 1
        self.stats.autocommit_writes += 1

    async def update_status(self) -> None:
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        status = self.rng.choice(STATUSES)
        if self.rng.random() < 0.5:
            # Autocommit update on its own.
            await self.conn.execute("UPDATE orders SET status = $1 WHERE id = $2", status, oid)
            self.stats.writes += 1
            self.stats.autocommit_writes += 1
            return None
        async with self.conn.transaction():
            await self.conn.execute("UPDATE orders SET status = $1 WHERE id = $2", status, oid)
            await self.conn.execute(
                "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, $3)",
                self._event_id(),
                oid,
                status,
            )
        self.stats.writes += 2
        self.stats.committed += 1
        return None

    async def bump_amount(self) -> None:
        if not self.orders:
            return await self.new_order()
        # The same prepared statement, bound with new values each time.
        await self.bump.fetch(
            Decimal(self.rng.randint(-500, 500)) / 100, self.rng.choice(self.orders)
        )
        self.stats.writes += 1
        self.stats.autocommit_writes += 1
        self.stats.prepared_reuses += 1
        return None

    async def delete_order(self) -> None:
        if len(self.orders) < 3:
            return await self.new_order()
        oid = self.orders.pop(self.rng.randrange(len(self.orders)))
        async with self.conn.transaction():
            await self.conn.execute("DELETE FROM order_events WHERE order_id = $1", oid)
            await self.conn.execute("DELETE FROM orders WHERE id = $1", oid)
        self.stats.writes += 2
        self.stats.committed += 1
        return None

    async def rollback_on_purpose(self) -> None:
        # Work the application abandons: nothing of it may reach either store.
        # The ids stay consumed, so a later insert never reuses them.
        try:
            async with self.conn.transaction():
                await self._insert_order()
                if self.orders:
                    await self.conn.execute(
                        "UPDATE orders SET status = 'cancelled' WHERE id = $1",
                        self.rng.choice(self.orders),
                    )
                    self.stats.writes += 1
                raise _RollBack
        except _RollBack:
            self.stats.rolled_back += 1

    async def failing_transaction(self) -> None:
        # A transaction that fails half-way (unique violation on a seed email):
        # the store rolls all of it back, so the mirror must apply none of it.
        try:
            async with self.conn.transaction():
                await self._insert_order()
                await self.conn.execute(
                    "INSERT INTO customers (id, name, email) VALUES ($1, 'dup', $2)",
                    self._customer_id(),
                    f"c{self.rng.randint(1, SEED_CUSTOMERS)}@example.com",
                )
        except asyncpg.UniqueViolationError:
            self.stats.rolled_back += 1
            self.stats.failed_on_purpose += 1
            self.stats.writes += 1

    async def savepoint_transaction(self) -> None:
        # A nested transaction (SAVEPOINT) fails and is rolled back to the
        # savepoint; the outer transaction goes on and commits.
        async with self.conn.transaction():
            oid = await self._insert_order()
            try:
                async with self.conn.transaction():
                    await self.conn.execute("UPDATE orders SET status = 'paid' WHERE id = $1", oid)
                    await self.conn.execute(
                        "INSERT INTO customers (id, name, email) VALUES ($1, 'dup', $2)",
                        self._customer_id(),
                        f"c{self.rng.randint(1, SEED_CUSTOMERS)}@example.com",
                    )
            except asyncpg.UniqueViolationError:
                self.stats.failed_on_purpose += 1
            await self.conn.execute(
                "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, 'reviewed')",
                self._event_id(),
                oid,
            )
        self.orders.append(oid)
        self.stats.writes += 3  # plus the two of _insert_order
        self.stats.committed += 1

    async def multi_statement_query(self) -> None:
        # Without parameters asyncpg sends a simple Query: two statements, one
        # implicit transaction.
        if not self.orders:
            return await self.new_order()
        oid, eid = self.rng.choice(self.orders), self._event_id()
        await self.conn.execute(
            f"UPDATE orders SET status = 'archived' WHERE id = {oid}; "
            f"INSERT INTO order_events (id, order_id, kind) VALUES ({eid}, {oid}, 'archived')"
        )
        self.stats.writes += 2
        self.stats.autocommit_writes += 1
        return None

    async def batch_events(self) -> None:
        # executemany: a pipeline of Bind/Execute under one Sync, one implicit
        # transaction on the store.
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        rows = [(self._event_id(), oid, "note") for _ in range(self.rng.randint(2, 5))]
        await self.conn.executemany(
            "INSERT INTO order_events (id, order_id, kind) VALUES ($1, $2, $3)", rows
        )
        self.stats.writes += len(rows)
        self.stats.autocommit_writes += 1
        return None

    async def copy_events(self) -> None:
        # COPY ... FROM STDIN (binary), the way asyncpg bulk-loads.
        if not self.orders:
            return await self.new_order()
        oid = self.rng.choice(self.orders)
        rows = [(self._event_id(), oid, "imported") for _ in range(self.rng.randint(3, 10))]
        await self.conn.copy_records_to_table(
            "order_events", records=rows, columns=["id", "order_id", "kind"]
        )
        self.stats.writes += 1
        self.stats.autocommit_writes += 1
        return None


async def run_workload(port: int, database: str, clients: int, seconds: float) -> WorkloadStats:
    conns = await asyncio.gather(*(_connect("127.0.0.1", port, database) for _ in range(clients)))
    total = WorkloadStats()
    try:
        started = time.monotonic()
        deadline = started + seconds
        results = await asyncio.gather(*(Client(i, c).run(deadline) for i, c in enumerate(conns)))
        total.elapsed = time.monotonic() - started
        for r in results:
            total.add(r)
    finally:
        # Closing the sessions lets their mirror queues finish and close.
        await asyncio.gather(*(c.close(timeout=10) for c in conns), return_exceptions=True)
    return total


# ------------------------------------------------------------------------ report
