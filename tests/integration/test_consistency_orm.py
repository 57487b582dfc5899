"""An ORM workload through the proxy leaves identical stores, every column included.

SQLAlchemy 2 on psycopg 3, the way applications write: serial primary keys
handed out by the database, ``created_at`` from ``DEFAULT now()``,
``updated_at`` set to ``now()`` by every ORM update, a UUID from
``gen_random_uuid()``, parents and children tied by a foreign key.  Eight
threads, each with its own engine, insert (several rows per flush), update,
bulk-update, delete and roll back for a few seconds.  Every value the old store
generates must reach the new store unchanged: the stores are then compared on
the databases themselves, table by table, every column.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import pytest
from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Uuid,
    create_engine,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.conftest import PG_HOST, PG_PORT, PG_USER, PgPair, ProxyProcess
from tests.integration.conftest import assert_no_divergences
from tests.integration.consistency import (
    assert_same_schema,
    assert_sequences_caught_up,
    run_threads,
    settle,
    start_proxy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THREADS = 8
DURATION = 4.0


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # SERIAL
    name: Mapped[str] = mapped_column(String(64))
    balance: Mapped[int] = mapped_column(Integer, default=0)
    uuid: Mapped[UUID] = mapped_column(Uuid, server_default=text("gen_random_uuid()"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), onupdate=func.now()
    )
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", cascade="all, delete-orphan"
    )


class Order(Base):
    __tablename__ = "purchase_order"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    note: Mapped[str | None] = mapped_column(String(200))
    uuid: Mapped[UUID] = mapped_column(Uuid, server_default=text("gen_random_uuid()"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), onupdate=func.now()
    )
    customer: Mapped[Customer] = relationship(back_populates="orders")


def orm_url(port: int, db: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{port}/{db}"


class Worker:
    """One application thread: its own engine, working on the customers it created.

    Threads never touch each other's rows (conflicting writers are the
    conflicts test's subject), but they share the sequences and the clock.
    """

    def __init__(self, url: str, index: int, deadline: float, ops: Counter[str]) -> None:
        self.url, self.index, self.deadline, self.ops = url, index, deadline, ops
        self.rng = random.Random(index)
        self.mine: list[int] = []

    def run(self) -> None:
        engine = create_engine(self.url, pool_size=1, max_overflow=0)
        try:
            with Session(engine) as session:
                while time.monotonic() < self.deadline:
                    self.step(session)
        finally:
            engine.dispose()

    def step(self, s: Session) -> None:
        roll = self.rng.random()
        if roll < 0.4 or len(self.mine) < 4:
            self.insert(s)
        elif roll < 0.65:
            self.update(s)
        elif roll < 0.8:
            self.bulk_update(s)
        elif roll < 0.93:
            self.delete(s)
        else:
            self.rolled_back_insert(s)

    def new_customer(self, n: int) -> Customer:
        orders = [
            Order(amount=Decimal(self.rng.randint(100, 99_999)) / 100, note=f"order {k}")
            for k in range(self.rng.randint(1, 3))
        ]
        return Customer(name=f"w{self.index}-{n}", balance=self.rng.randint(0, 1000), orders=orders)

    def insert(self, s: Session) -> None:
        batch = [self.new_customer(len(self.mine) + k) for k in range(self.rng.randint(2, 4))]
        s.add_all(batch)
        s.flush()  # one multi-row INSERT ... RETURNING per table
        self.mine.extend(c.id for c in batch)
        s.commit()
        self.ops["insert"] += 1

    def update(self, s: Session) -> None:
        customer = s.get(Customer, self.rng.choice(self.mine))
        assert customer is not None
        customer.balance += self.rng.randint(1, 50)
        customer.name = f"{customer.name.split('~')[0]}~{self.rng.randint(0, 9)}"
        for order in customer.orders[:1]:
            order.note = f"changed {self.rng.randint(0, 999)}"
        s.commit()
        self.ops["update"] += 1

    def bulk_update(self, s: Session) -> None:
        ids = self.rng.sample(self.mine, min(3, len(self.mine)))
        s.execute(update(Order).where(Order.customer_id.in_(ids)).values(amount=Order.amount + 1))
        s.commit()
        self.ops["bulk_update"] += 1

    def delete(self, s: Session) -> None:
        customer = s.get(Customer, self.mine.pop(self.rng.randrange(len(self.mine))))
        assert customer is not None
        s.delete(customer)  # its orders go first (cascade)
        s.commit()
        self.ops["delete"] += 1

    def rolled_back_insert(self, s: Session) -> None:
        s.add(self.new_customer(-1))
        s.flush()  # consumes sequence values on old, then nothing is committed
        s.rollback()
        self.ops["rollback"] += 1


def run_workload(proxy: ProxyProcess, db: str) -> Counter[str]:
    ops: Counter[str] = Counter()
    deadline = time.monotonic() + DURATION
    url = orm_url(proxy.port, db)
    run_threads(THREADS, lambda i: Worker(url, i, deadline, ops).run())
    return ops


def check_after_workload(proxy: ProxyProcess, pair: PgPair, ops: Counter[str]) -> None:
    assert min(ops[k] for k in ("insert", "update", "bulk_update", "delete")) > 0, ops
    tables = settle(proxy, pair)
    assert set(tables) == {"customer", "purchase_order"}
    with Session(create_engine(orm_url(PG_PORT, pair.new))) as s:
        # The comparison saw real data: rows with clock and uuid values in them.
        assert (s.scalar(select(func.count()).select_from(Customer)) or 0) > THREADS
        assert (s.scalar(select(func.count(Customer.updated_at))) or 0) > 0
    assert_no_divergences(proxy)
    assert_sequences_caught_up(pair)


def create_schema_on_both_stores(pair: PgPair) -> None:
    for db in (pair.old, pair.new):
        engine = create_engine(orm_url(PG_PORT, db))
        Base.metadata.create_all(engine)
        engine.dispose()


def create_schema_through_proxy(proxy: ProxyProcess, pair: PgPair) -> None:
    """The DDL itself mirrored (the proxy's DDL policy): the new store gets the same schema."""
    engine = create_engine(orm_url(proxy.port, pair.old))
    Base.metadata.create_all(engine)
    engine.dispose()
    proxy.wait_mirror_idle()
    assert_same_schema(pair)


# Each level once; the schema made both ways (one more workload would cost ~10 s).
@pytest.mark.parametrize(
    ("mode", "schema"), [("sync", "through-proxy"), ("async", "on-both-stores")]
)
def test_orm_workload_leaves_identical_stores(
    pg_pair: PgPair, proxy_factory: Callable[..., ProxyProcess], mode: str, schema: str
) -> None:
    if schema == "on-both-stores":
        create_schema_on_both_stores(pg_pair)
    proxy = start_proxy(proxy_factory, pg_pair, mode)
    if schema == "through-proxy":
        create_schema_through_proxy(proxy, pg_pair)
    ops = run_workload(proxy, pg_pair.old)
    check_after_workload(proxy, pg_pair, ops)
