"""`db seed`: deterministic demo data, generated inside PostgreSQL (INSERT ... SELECT over
generate_series), not streamed row by row from Python.

Every pseudo-random choice is `hashint8extended(row number, seed + salt)`: PostgreSQL keeps its hash
functions stable across releases and platforms (hash partitioning depends on it), so the same
arguments always give the same rows, and a million customers with five million orders take a few
minutes of the server's time instead of Python's (7 min 10 s before). Seeding an already seeded
database is refused unless `--reset` is given.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg2
from psycopg2 import sql
from tqdm import tqdm

from swagger_server.db.catalogue import truncate_store
from swagger_server.db.queries.rollups import rebuild

logger = logging.getLogger(__name__)

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis",
         "Radia", "John", "Hedy", "Linus", "Katherine", "Tim", "Sophie", "Guido", "Anita", "Niklaus"]  # fmt: skip
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Ritchie",
        "Perlman", "McCarthy", "Lamarr", "Torvalds", "Johnson", "Berners-Lee", "Wilson", "van Rossum", "Borg",
        "Wirth"]  # fmt: skip
GOODS = ["Keyboard", "Mouse", "Monitor", "Cable", "Laptop Stand", "Headset", "Webcam", "Dock", "Lamp", "Notebook",
         "Pen", "Mug", "Chair", "Desk Mat", "Speaker", "Charger", "Hub", "Microphone"]  # fmt: skip
ADJECTIVES = ["Compact", "Ergonomic", "Wireless", "Classic", "Pro", "Silent", "Travel", "Studio", "Mini"]

DAYS = 365  # by default orders span the twelve months before the day of seeding
BATCH = 250_000  # orders per statement: a progress step, and a bound on one statement's memory

# A uniform pseudo-random integer in [0, n) for row `i` and purpose `salt` (the seed's stream).
_R = "(((hashint8extended(({i})::bigint, %(seed)s::bigint * 1000 + {salt}) %% ({n})) + ({n})) %% ({n}))"


def _r(i: str, salt: int, n: str) -> str:
    return _R.format(i=i, salt=salt, n=n)


# The lines of order `o`: 1 to 4 distinct products (base, base + stride, ...), 1 to 3 of each, at the
# product's price, computed from the product's id as _PRODUCTS computes it (no lookup per line).
_LINES = f"""
    SELECT o, product_id, quantity, 199 + {_r("product_id", 13, "49800")} AS price_cents
    FROM generate_series(0, least({_r("o", 4, "4")}, %(products)s - 1)) AS j,
         LATERAL (SELECT 1 + ({_r("o", 5, "%(products)s")} + j * greatest(%(products)s / 4, 1)) %% %(products)s
                         AS product_id,
                         1 + {_r("o * 4 + j", 6, "3")} AS quantity) AS l
"""

_CUSTOMERS = f"""
INSERT INTO customers (id, name, email, created_at)
SELECT i, f || ' ' || l, lower(replace(f || '.' || l || '.' || i || '@example.com', ' ', '')),
       %(start)s - make_interval(days => (1 + {_r("i", 3, "2 * %(days)s - 1")})::int)
FROM generate_series(1, %(customers)s) AS i,
     LATERAL (SELECT (%(first)s::text[])[1 + {_r("i", 1, "20")}] AS f,
                     (%(last)s::text[])[1 + {_r("i", 2, "20")}] AS l) AS n
"""

_PRODUCTS = f"""
INSERT INTO products (id, sku, name, price_cents, stock, created_at, updated_at)
SELECT i, 'SKU-' || lpad(i::text, 6, '0'),
       (%(adjectives)s::text[])[1 + {_r("i", 11, "9")}] || ' ' || (%(goods)s::text[])[1 + {_r("i", 12, "18")}] || ' ' || i,
       199 + {_r("i", 13, "49800")}, {_r("i", 14, "500")}, c, c
FROM generate_series(1, %(products)s) AS i,
     LATERAL (SELECT %(start)s - make_interval(days => (1 + {_r("i", 15, "%(days)s - 1")})::int) AS c) AS t
"""

_ORDERS = f"""
INSERT INTO orders (id, customer_id, total_cents, created_at)
SELECT o, 1 + {_r("o", 21, "%(customers)s")},
       (SELECT sum(l.quantity * l.price_cents) FROM ({_LINES}) AS l),
       %(start)s + make_interval(secs => {_r("o", 22, "%(days)s * 86400")}::double precision)
FROM generate_series(%(low)s, %(high)s) AS o
"""

_ORDER_LINES = f"""
INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
SELECT l.o, l.product_id, l.quantity, l.price_cents
FROM generate_series(%(low)s, %(high)s) AS o, LATERAL ({_LINES}) AS l
"""


def seed(
    dsn: str,
    customers: int = 10_000,
    products: int = 1_000,
    orders: int = 100_000,
    reset: bool = False,
    quiet: bool = False,
    seed_value: int = 42,
    today: datetime | None = None,
    days: int = DAYS,
) -> dict:
    """Fill the store with demo data in one transaction; return the row counts.

    Orders fall in the `days` days before `today` (default: now, UTC), so the dashboard's default
    range (the last 30 days) has data; customers and products were created before the first order.
    The dashboard's rollups are rebuilt from the new rows before the transaction commits.

    Raises ValueError if the store already has customers and `reset` is false.
    """
    end = (today or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    params = {
        "seed": seed_value,
        "start": end - timedelta(days=days),
        "days": days,
        "customers": customers,
        "products": products,
        "first": FIRST,
        "last": LAST,
        "goods": GOODS,
        "adjectives": ADJECTIVES,
    }
    placing = bool(customers and products)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
            if cur.fetchone()[0]:
                if not reset:
                    raise ValueError("the store already has data; pass --reset to replace it")
                truncate_store(conn)  # every table, from the catalogue (db/catalogue.py)
            # Where the role may (a superuser, or one granted SET on it), skip the foreign-key and
            # trigger checks of each generated row, as pg_restore --disable-triggers does: the rows
            # reference each other by construction, and the rollups are rebuilt below. CHECK
            # constraints (the text rule, the stock) still run. 14 s instead of 28 s a million lines.
            cur.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
            if cur.fetchone()[0]:
                cur.execute("SET LOCAL session_replication_role = replica")
            steps = 2 + (2 * -(-orders // BATCH) if placing else 0)
            with tqdm(total=steps, desc="seeding", unit="step", disable=True if quiet else None, leave=False) as bar:
                cur.execute(_CUSTOMERS, params)
                bar.update()
                cur.execute(_PRODUCTS, params)
                bar.update()
                lines = 0
                for statement in (_ORDERS, _ORDER_LINES) if placing else ():
                    for low in range(1, orders + 1, BATCH):
                        cur.execute(statement, {**params, "low": low, "high": min(orders, low + BATCH - 1)})
                        lines += cur.rowcount if statement is _ORDER_LINES else 0
                        bar.update()
            for table in ("customers", "products", "orders"):
                # Identities continue after the seeded ids, so the API's inserts do not collide.
                cur.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST((SELECT max(id) FROM {}), 1))"
                    ).format(sql.Identifier(table)),
                    (table,),
                )
            rebuild(conn)
            cur.execute(
                "ANALYZE customers, products, orders, order_lines, sales_days, sales_product_days, sales_product_months"
            )
        counts = {
            "customers": customers,
            "products": products,
            "orders": orders if placing else 0,
            "order_lines": lines,
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
