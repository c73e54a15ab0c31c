"""The sales dashboard: one query, one round trip, the whole report built as JSON by PostgreSQL."""

from __future__ import annotations

from datetime import date


def sales_report(conn, start: date, end: date, top: int, timeout_ms: int) -> dict:
    """Totals, revenue per day, top customers and top products for orders placed on [start, end] (UTC days).

    Under a statement timeout of its own (`timeout_ms`, after the connection's in the same message, so it
    wins, and still one round trip): QueryCanceled past it."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SET LOCAL statement_timeout = %(timeout)s;
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
        """,
            {"start": start, "end": end, "top": top, "timeout": int(timeout_ms)},
        )
        return cur.fetchone()[0]
