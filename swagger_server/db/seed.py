"""`db seed`: deterministic demo data, loaded with COPY (not row-by-row INSERTs).

The same arguments always give the same rows (a seeded generator), so benchmarks and demos are
repeatable. Seeding an already seeded database is refused unless `--reset` is given.
"""

from __future__ import annotations

import io
import logging
import random
from datetime import UTC, datetime, timedelta

import psycopg2
from psycopg2 import sql
from tqdm import tqdm

from swagger_server.db.catalogue import truncate_store

logger = logging.getLogger(__name__)

FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "John",
    "Hedy",
    "Linus",
    "Katherine",
    "Tim",
    "Sophie",
    "Guido",
    "Anita",
    "Niklaus",
]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "McCarthy",
    "Lamarr",
    "Torvalds",
    "Johnson",
    "Berners-Lee",
    "Wilson",
    "van Rossum",
    "Borg",
    "Wirth",
]
GOODS = [
    "Keyboard",
    "Mouse",
    "Monitor",
    "Cable",
    "Laptop Stand",
    "Headset",
    "Webcam",
    "Dock",
    "Lamp",
    "Notebook",
    "Pen",
    "Mug",
    "Chair",
    "Desk Mat",
    "Speaker",
    "Charger",
    "Hub",
    "Microphone",
]
ADJECTIVES = ["Compact", "Ergonomic", "Wireless", "Classic", "Pro", "Silent", "Travel", "Studio", "Mini"]

DAYS = 365  # orders span the twelve months before the day of seeding
BATCH = 20_000


def _copy(cur, table: str, columns: str, rows, total: int, bar_label: str, quiet: bool) -> None:
    """Stream `rows` (tuples) into `table` with COPY, in batches, with a progress bar on a terminal only
    (tqdm's disable=None: piped or logged output is not garbled by carriage returns)."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c.strip()) for c in columns.split(","))
    )
    with tqdm(total=total, desc=bar_label, unit="rows", disable=True if quiet else None, leave=False) as bar:
        buf, n = io.StringIO(), 0
        for row in rows:
            buf.write("\t".join(str(v) for v in row) + "\n")
            n += 1
            if n == BATCH:
                buf.seek(0)
                cur.copy_expert(statement, buf)
                bar.update(n)
                buf, n = io.StringIO(), 0
        if n:
            buf.seek(0)
            cur.copy_expert(statement, buf)
            bar.update(n)


def seed(
    dsn: str,
    customers: int = 10_000,
    products: int = 1_000,
    orders: int = 100_000,
    reset: bool = False,
    quiet: bool = False,
    seed_value: int = 42,
    today: datetime | None = None,
) -> dict:
    """Fill the store with demo data in one transaction; return the row counts.

    Orders fall in the twelve months before `today` (default: now, UTC), so the dashboard's default
    range (the last 30 days) has data; customers and products were created before the first order.

    Raises ValueError if the store already has customers and `reset` is false.
    """
    rng = random.Random(seed_value)
    end = (today or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
            if cur.fetchone()[0]:
                if not reset:
                    raise ValueError("the store already has data; pass --reset to replace it")
                truncate_store(conn)  # every table, from the catalogue (db/catalogue.py)

            def customer_rows():
                for i in range(1, customers + 1):
                    first, last = rng.choice(FIRST), rng.choice(LAST)
                    created = start - timedelta(days=rng.randrange(1, 2 * DAYS))
                    email = f"{first}.{last}.{i}@example.com".lower().replace(" ", "")
                    yield i, f"{first} {last}", email, created.isoformat()

            _copy(cur, "customers", "id, name, email, created_at", customer_rows(), customers, "customers", quiet)

            prices = {}

            def product_rows():
                for i in range(1, products + 1):
                    price = rng.randrange(199, 49_999)
                    prices[i] = price
                    name = f"{rng.choice(ADJECTIVES)} {rng.choice(GOODS)} {i}"
                    created = (start - timedelta(days=rng.randrange(1, DAYS))).isoformat()
                    yield i, f"SKU-{i:06d}", name, price, rng.randrange(0, 500), created, created

            _copy(
                cur,
                "products",
                "id, sku, name, price_cents, stock, created_at, updated_at",
                product_rows(),
                products,
                "products",
                quiet,
            )

            lines: list[tuple] = []

            def order_rows():
                for i in range(1, orders + 1):
                    picked = rng.sample(range(1, products + 1), k=min(products, rng.randint(1, 4)))
                    total = 0
                    for product_id in picked:
                        qty = rng.randint(1, 3)
                        total += qty * prices[product_id]
                        lines.append((i, product_id, qty, prices[product_id]))
                    created = start + timedelta(seconds=rng.randrange(0, DAYS * 86400))
                    yield i, rng.randint(1, customers), total, created.isoformat()

            if customers and products:
                _copy(cur, "orders", "id, customer_id, total_cents, created_at", order_rows(), orders, "orders", quiet)
                _copy(
                    cur,
                    "order_lines",
                    "order_id, product_id, quantity, unit_price_cents",
                    iter(lines),
                    len(lines),
                    "order lines",
                    quiet,
                )
            for table in ("customers", "products", "orders"):
                # Identities continue after the seeded ids, so the API's inserts do not collide.
                cur.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST((SELECT max(id) FROM {}), 1))"
                    ).format(sql.Identifier(table)),
                    (table,),
                )
            cur.execute("ANALYZE customers, products, orders, order_lines")
        counts = {
            "customers": customers,
            "products": products,
            "orders": orders if customers and products else 0,
            "order_lines": len(lines),
        }
        logger.info("seeded %s", counts)
        return counts
    finally:
        conn.close()


def is_seeded(dsn: str) -> bool:
    """True if the store already holds customers."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
            return cur.fetchone()[0]
    finally:
        conn.close()
