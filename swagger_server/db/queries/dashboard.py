"""The sales dashboard: one query, one round trip, the whole report built as JSON by PostgreSQL.

What it reads (docs/SCALING.md, "Data volume"):
- totals, revenue per day and top products from the rollups (schema 013): a row per day, per product
  and day, per product and month (whole months from the monthly rollup, the days at either end from
  the daily one), plus the raw rows the rollups do not hold yet (orders past the watermark, days an
  UPDATE or DELETE made dirty). One statement is one snapshot, so the report is exact whenever the
  roller last ran;
- distinct and top customers from the raw orders' covering indexes (010, 012): exact, and the one
  part whose cost grows with the range (a year of 5 million orders: 0.8 s), which is why the
  controller keeps a report for a short while (`as_of`).
"""

from __future__ import annotations

from datetime import date, timedelta

from swagger_server.db.queries.rollups import NAME

_REPORT = """
SET LOCAL statement_timeout = %(timeout)s;
SET LOCAL work_mem = %(work_mem)s;
SET LOCAL enable_hashagg = off;
WITH dirty AS MATERIALIZED (
    SELECT DISTINCT day FROM sales_rollup_dirty WHERE day BETWEEN %(start)s AND %(end)s
), tail AS MATERIALIZED (
    -- Orders past the watermark (not rolled up yet): the newest, by the primary key.
    SELECT id, created_at, total_cents, (created_at AT TIME ZONE 'UTC')::date AS day FROM orders
    WHERE id > COALESCE((SELECT last_order_id FROM sales_rollup_state WHERE name = %(rollup)s), 0)
    ORDER BY id
), tail_in_range AS MATERIALIZED (
    SELECT id, day, total_cents FROM tail
    WHERE day BETWEEN %(start)s AND %(end)s AND day <> ALL(ARRAY(SELECT day FROM dirty))
), dirty_orders AS MATERIALIZED (
    -- Every order of a dirty day, rolled up or not: such a day is read from the raw rows alone.
    SELECT r.id, d.day, r.total_cents FROM dirty d
    JOIN orders r ON r.created_at >= d.day::timestamp AT TIME ZONE 'UTC'
                 AND r.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
), per_day AS (
    SELECT day, sum(orders) AS orders, sum(revenue_cents) AS revenue_cents FROM (
        SELECT day, orders, revenue_cents FROM sales_days
        WHERE day BETWEEN %(start)s AND %(end)s AND day <> ALL(ARRAY(SELECT day FROM dirty))
        UNION ALL SELECT day, 1, total_cents FROM tail_in_range
        UNION ALL SELECT day, 1, total_cents FROM dirty_orders
    ) d GROUP BY day ORDER BY day
), per_customer AS MATERIALIZED (
    -- Exact, from the raw orders' covering indexes: by created_at for a short range, in customer
    -- order for a long one (a streaming aggregate: hashing is off, so memory stays flat).
    SELECT customer_id, count(*) AS orders, sum(total_cents) AS revenue_cents FROM orders
    WHERE created_at >= %(start)s::date::timestamp AT TIME ZONE 'UTC'
      AND created_at <  (%(end)s::date + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY customer_id
), totals AS (
    SELECT COALESCE(sum(orders), 0) AS orders, COALESCE(sum(revenue_cents), 0) AS revenue_cents,
           (SELECT count(*) FROM per_customer) AS customers,
           COALESCE(round(sum(revenue_cents) / NULLIF(sum(orders), 0)), 0)::bigint AS average_order_cents
    FROM per_day
), top_customers AS (
    SELECT c.id, c.name, t.orders, t.revenue_cents
    FROM (SELECT * FROM per_customer ORDER BY revenue_cents DESC, customer_id LIMIT %(top)s) t
    JOIN customers c ON c.id = t.customer_id
    ORDER BY t.revenue_cents DESC, c.id
), product_rows AS (
    -- Whole months from the monthly rollup, the days at either end from the daily one, what is
    -- not rolled up yet from the raw lines; a month or day made dirty is read from finer rows.
    SELECT product_id, units, revenue_cents FROM sales_product_months
    WHERE month >= %(months_from)s AND month < %(months_to)s
      AND month <> ALL(ARRAY(SELECT date_trunc('month', day)::date FROM dirty))
    UNION ALL
    SELECT product_id, units, revenue_cents FROM sales_product_days
    WHERE day >= %(start)s AND day < %(head_to)s AND day <> ALL(ARRAY(SELECT day FROM dirty))
    UNION ALL
    SELECT product_id, units, revenue_cents FROM sales_product_days
    WHERE day >= %(tail_from)s AND day <= %(end)s AND day <> ALL(ARRAY(SELECT day FROM dirty))
    UNION ALL
    SELECT p.product_id, p.units, p.revenue_cents
    FROM (SELECT DISTINCT date_trunc('month', day)::date AS month FROM dirty
          WHERE day >= %(months_from)s AND day < %(months_to)s) m,
         LATERAL (SELECT product_id, units, revenue_cents FROM sales_product_days
                  WHERE day >= m.month AND day < (m.month + interval '1 month')::date
                    AND day <> ALL(ARRAY(SELECT day FROM dirty)) OFFSET 0) p
    UNION ALL
    -- Each raw order's lines by the primary key (OFFSET 0 keeps it a lookup per order: the planner
    -- cannot know how few orders are past the watermark, and would otherwise hash all order_lines).
    SELECT l.product_id, l.quantity, l.quantity::bigint * l.unit_price_cents
    FROM (SELECT id FROM tail_in_range UNION ALL SELECT id FROM dirty_orders) r,
         LATERAL (SELECT product_id, quantity, unit_price_cents FROM order_lines WHERE order_id = r.id OFFSET 0) l
), top_products AS (
    SELECT p.id, p.name, t.units, t.revenue_cents
    FROM (SELECT product_id, sum(units) AS units, sum(revenue_cents) AS revenue_cents
          FROM product_rows GROUP BY product_id
          ORDER BY revenue_cents DESC, product_id LIMIT %(top)s) t
    JOIN products p ON p.id = t.product_id
    ORDER BY t.revenue_cents DESC, p.id
)
SELECT json_build_object(
    'totals', (SELECT row_to_json(totals) FROM totals),
    'revenue_per_day', COALESCE((SELECT json_agg(per_day) FROM per_day), '[]'),
    'top_customers', COALESCE((SELECT json_agg(top_customers) FROM top_customers), '[]'),
    'top_products', COALESCE((SELECT json_agg(top_products) FROM top_products), '[]')),
    now()
"""

# The query the report replaced, kept as the rollups' reference: the tests and `make bench-scale`
# check that the report equals it (it reads every order line of the range; never served).
DIRECT = """
WITH o AS (
    SELECT id, customer_id, total_cents, created_at FROM orders
    WHERE created_at >= %(start)s::date::timestamp AT TIME ZONE 'UTC'
      AND created_at <  (%(end)s::date + 1)::timestamp AT TIME ZONE 'UTC'
), totals AS (
    SELECT count(*) AS orders, COALESCE(sum(total_cents), 0) AS revenue_cents,
           count(DISTINCT customer_id) AS customers,
           COALESCE(round(avg(total_cents)), 0)::bigint AS average_order_cents
    FROM o
), per_day AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS orders,
           sum(total_cents) AS revenue_cents
    FROM o GROUP BY 1 ORDER BY 1
), top_customers AS (
    SELECT c.id, c.name, count(*) AS orders, sum(o.total_cents) AS revenue_cents
    FROM o JOIN customers c ON c.id = o.customer_id
    GROUP BY c.id ORDER BY revenue_cents DESC, c.id LIMIT %(top)s
), top_products AS (
    SELECT p.id, p.name, sum(l.quantity) AS units, sum(l.quantity::bigint * l.unit_price_cents) AS revenue_cents
    FROM o JOIN order_lines l ON l.order_id = o.id JOIN products p ON p.id = l.product_id
    GROUP BY p.id ORDER BY revenue_cents DESC, p.id LIMIT %(top)s
)
SELECT json_build_object(
    'totals', (SELECT row_to_json(totals) FROM totals),
    'revenue_per_day', COALESCE((SELECT json_agg(per_day) FROM per_day), '[]'),
    'top_customers', COALESCE((SELECT json_agg(top_customers) FROM top_customers), '[]'),
    'top_products', COALESCE((SELECT json_agg(top_products) FROM top_products), '[]'))
"""


def whole_months(start: date, end: date) -> tuple[date, date]:
    """[first, last) of the calendar months that lie wholly inside [start, end]; empty when first >= last."""
    first = start if start.day == 1 else (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    last = (end + timedelta(days=1)).replace(day=1)
    return first, max(first, last)


def sales_report(conn, start: date, end: date, top: int, timeout_ms: int, work_mem_kb: int = 65536) -> tuple[dict, str]:
    """(report, as_of): totals, revenue per day, top customers and top products for orders placed on
    [start, end] (UTC days), and the database's time of the snapshot it was read in (ISO 8601).

    Under a statement timeout of its own (`timeout_ms`, after the connection's in the same message, so it
    wins, and still one round trip): QueryCanceled past it. `work_mem_kb` bounds the memory of its
    per-customer aggregate before it spills to disk."""
    months_from, months_to = whole_months(start, end)
    # The days outside the whole months: [start, head_to) and [tail_from, end].
    head_to, tail_from = min(months_from, end + timedelta(days=1)), max(months_to, start)
    with conn.cursor() as cur:
        cur.execute(
            _REPORT,
            {
                "start": start,
                "end": end,
                "top": top,
                "timeout": int(timeout_ms),
                "work_mem": f"{int(work_mem_kb)}kB",
                "rollup": NAME,
                "months_from": months_from,
                "months_to": months_to,
                "head_to": head_to,
                "tail_from": tail_from,
            },
        )
        report, as_of = cur.fetchone()
        return report, as_of.isoformat()


def direct_report(conn, start: date, end: date, top: int) -> dict:
    """The report read from the raw rows alone (the reference the rollups are checked against)."""
    with conn.cursor() as cur:
        cur.execute(DIRECT, {"start": start, "end": end, "top": top})
        return cur.fetchone()[0]
