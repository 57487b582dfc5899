"""Constants and small helpers shared by the demo's modules."""

from __future__ import annotations

import argparse
import math
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

PROG = "shadowproxy demo"
PG_USER = "postgres"
TABLES = ("customers", "orders", "order_events")
SEED_CUSTOMERS = 20
SEED_ORDERS = 60
# Rows a client inserts get ids from its own range, far above the seed rows.
CLIENT_ID_SPAN = 1_000_000
DRAIN_TIMEOUT = 120.0
PROXY_START_TIMEOUT = 20.0

SCHEMA = """
CREATE TABLE customers (
    id    serial PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL
);
CREATE TABLE order_events (
    id       bigserial PRIMARY KEY,
    order_id integer NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind     text NOT NULL
);
CREATE INDEX order_events_order_id ON order_events (order_id);
"""

# Every seed row has an explicit id and deterministic values, so both stores
# start byte-for-byte identical (no sequence, clock or random value involved).
SEED = f"""
INSERT INTO customers (id, name, email)
SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, {SEED_CUSTOMERS}) g;
INSERT INTO orders (id, customer_id, amount, status)
SELECT g, 1 + g % {SEED_CUSTOMERS}, (g * 37 % 1000) + 0.99, 'new'
FROM generate_series(1, {SEED_ORDERS}) g;
INSERT INTO order_events (id, order_id, kind)
SELECT g, g, 'created' FROM generate_series(1, {SEED_ORDERS}) g;
"""

STATUSES = ("paid", "shipped", "delivered", "cancelled")


class DemoError(Exception):
    """Something the demo cannot work around; the message is printed as is."""


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------- arguments


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _db_name(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use lower-case letters, digits and '_' (a plain identifier)"
        )
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback)
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _dsn(host: str, port: int, db: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"postgresql://{PG_USER}@{shown}:{port}/{db}"


def _fmt_seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < 1.0:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def _fmt_count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


# --------------------------------------------------------------- Prometheus text
