"""SQL for the dashboard's rollups (schema 013): orders and revenue per day, units and revenue per
product per day and per month, rolled up by order id up to a watermark, and the days a later change
made dirty, recomputed.

The roller (db/rollups.py) owns the transactions; these functions never commit."""

from __future__ import annotations

NAME = "sales"  # the rollup's row in sales_rollup_state
LOCK_ID = 0x5A1E5  # one roller at a time, fleet-wide (a transaction-level advisory lock)

_DAY = "(o.created_at AT TIME ZONE 'UTC')::date"

# The orders with id in (lo, hi] by day, and their lines by day and product, added to the rollups.
_ADD_DAYS = f"""
INSERT INTO sales_days (day, orders, revenue_cents)
SELECT {_DAY}, count(*), sum(o.total_cents) FROM orders o
WHERE o.id > %(lo)s AND o.id <= %(hi)s
GROUP BY 1
ON CONFLICT (day) DO UPDATE SET orders = sales_days.orders + EXCLUDED.orders,
    revenue_cents = sales_days.revenue_cents + EXCLUDED.revenue_cents
"""
_ADD_PRODUCT_DAYS = f"""
INSERT INTO sales_product_days (day, product_id, units, revenue_cents)
SELECT {_DAY}, l.product_id, sum(l.quantity), sum(l.quantity::bigint * l.unit_price_cents)
FROM orders o JOIN order_lines l ON l.order_id = o.id
WHERE o.id > %(lo)s AND o.id <= %(hi)s
GROUP BY 1, 2
ON CONFLICT (day, product_id) DO UPDATE SET units = sales_product_days.units + EXCLUDED.units,
    revenue_cents = sales_product_days.revenue_cents + EXCLUDED.revenue_cents
"""
_ADD_MONTHS = f"""
INSERT INTO sales_product_months (month, product_id, units, revenue_cents)
SELECT date_trunc('month', {_DAY})::date, l.product_id, sum(l.quantity), sum(l.quantity::bigint * l.unit_price_cents)
FROM orders o JOIN order_lines l ON l.order_id = o.id
WHERE o.id > %(lo)s AND o.id <= %(hi)s
GROUP BY 1, 2
ON CONFLICT (month, product_id) DO UPDATE SET units = sales_product_months.units + EXCLUDED.units,
    revenue_cents = sales_product_months.revenue_cents + EXCLUDED.revenue_cents
"""
# A dirty day again from the raw rows (ids up to the watermark), each day by the created_at index.
_REDO_DAYS = f"""
DELETE FROM sales_days WHERE day = ANY(%(days)s::date[]);
INSERT INTO sales_days (day, orders, revenue_cents)
SELECT d.day, count(*), sum(o.total_cents)
FROM unnest(%(days)s::date[]) AS d (day)
JOIN orders o ON o.created_at >= d.day::timestamp AT TIME ZONE 'UTC'
             AND o.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
WHERE o.id <= %(hi)s
GROUP BY 1;
DELETE FROM sales_product_days WHERE day = ANY(%(days)s::date[]);
INSERT INTO sales_product_days (day, product_id, units, revenue_cents)
SELECT {_DAY}, l.product_id, sum(l.quantity), sum(l.quantity::bigint * l.unit_price_cents)
FROM unnest(%(days)s::date[]) AS d (day)
JOIN orders o ON o.created_at >= d.day::timestamp AT TIME ZONE 'UTC'
             AND o.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC',
     -- Each order's lines by the primary key: OFFSET 0 keeps the planner from hashing all order_lines.
     LATERAL (SELECT product_id, quantity, unit_price_cents FROM order_lines WHERE order_id = o.id OFFSET 0) l
WHERE o.id <= %(hi)s
GROUP BY 1, 2;
DELETE FROM sales_product_months WHERE month = ANY(%(months)s::date[]);
INSERT INTO sales_product_months (month, product_id, units, revenue_cents)
SELECT m.month, p.product_id, sum(p.units), sum(p.revenue_cents)
FROM unnest(%(months)s::date[]) AS m (month)
JOIN sales_product_days p ON p.day >= m.month AND p.day < (m.month + interval '1 month')::date
GROUP BY 1, 2
"""
_SET_WATERMARK = """
INSERT INTO sales_rollup_state (name, last_order_id) VALUES (%(name)s, %(hi)s)
ON CONFLICT (name) DO UPDATE SET last_order_id = EXCLUDED.last_order_id, updated_at = now()
"""


def complete_up_to(conn, lock_timeout_ms: int) -> int:
    """The highest order id below which every order is committed (or rolled back): the sequence's
    last value, read once the orders table's writers in flight have finished (a SHARE lock waits for
    them, and is given back at once by the caller's commit). QueryCanceled (LockNotAvailable) if they
    take longer than `lock_timeout_ms`: the roller tries again later; nobody waited long behind it.
    Run it in a transaction of its own."""
    with conn.cursor() as cur:
        cur.execute(
            "SET LOCAL lock_timeout = %s; LOCK TABLE orders IN SHARE MODE;"
            " SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('orders', 'id')::regclass), 0)",
            (int(lock_timeout_ms),),
        )
        return cur.fetchone()[0]


def roll_up(conn, safe_id: int, batch: int) -> tuple[int, int, int] | None:
    """Roll up the next at most `batch` orders up to `safe_id`, and recompute the dirty days; return
    (from id, to id, dirty days), or None if another roller holds the lock. Run it in a READ COMMITTED
    transaction of its own: the lock comes first, so the watermark read after it is the last roller's."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_ID,))
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT last_order_id FROM sales_rollup_state WHERE name = %s", (NAME,))
        row = cur.fetchone()
        lo = row[0] if row else 0
        hi = max(lo, min(safe_id, lo + batch))
        cur.execute("DELETE FROM sales_rollup_dirty RETURNING day")
        days = sorted({day for (day,) in cur.fetchall()})
        if hi > lo:
            cur.execute(_ADD_DAYS, {"lo": lo, "hi": hi})
            cur.execute(_ADD_PRODUCT_DAYS, {"lo": lo, "hi": hi})
            cur.execute(_ADD_MONTHS, {"lo": lo, "hi": hi})
        if days:
            months = sorted({day.replace(day=1) for day in days})
            cur.execute(_REDO_DAYS, {"days": days, "months": months, "hi": hi})
        if hi > lo or row is None:
            cur.execute(_SET_WATERMARK, {"name": NAME, "hi": hi})
        return lo, hi, len(days)


def rebuild(conn) -> None:
    """Every rollup anew from the raw rows (`db seed`, in its own transaction, which holds every order
    it counts): the watermark becomes the highest order id."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE sales_days, sales_product_days, sales_product_months, sales_rollup_dirty")
        cur.execute("SELECT COALESCE(max(id), 0) FROM orders")
        hi = cur.fetchone()[0]
        cur.execute(_ADD_DAYS.split("ON CONFLICT")[0], {"lo": 0, "hi": hi})
        cur.execute(_ADD_PRODUCT_DAYS.split("ON CONFLICT")[0], {"lo": 0, "hi": hi})
        cur.execute(
            "INSERT INTO sales_product_months (month, product_id, units, revenue_cents)"
            " SELECT date_trunc('month', day)::date, product_id, sum(units), sum(revenue_cents)"
            " FROM sales_product_days GROUP BY 1, 2"
        )
        cur.execute(_SET_WATERMARK, {"name": NAME, "hi": hi})
