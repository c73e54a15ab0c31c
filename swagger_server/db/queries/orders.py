"""SQL for orders. Placing an order is several statements; the caller runs them in one transaction."""
from __future__ import annotations

_ORDER_BY_ID = """
    SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at,
           COALESCE(json_agg(json_build_object('product_id', l.product_id, 'quantity', l.quantity,
                                               'unit_price_cents', l.unit_price_cents)
                             ORDER BY l.product_id) FILTER (WHERE l.order_id IS NOT NULL), '[]') AS lines
    FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
    WHERE o.id = %s GROUP BY o.id
"""

_ORDERS_OF_CUSTOMER = """
    SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at,
           COALESCE(json_agg(json_build_object('product_id', l.product_id, 'quantity', l.quantity,
                                               'unit_price_cents', l.unit_price_cents)
                             ORDER BY l.product_id) FILTER (WHERE l.order_id IS NOT NULL), '[]') AS lines
    FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
    WHERE o.customer_id = %s AND o.id > %s GROUP BY o.id ORDER BY o.id LIMIT %s
"""


def get_order(conn, order_id: int) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(_ORDER_BY_ID, (order_id,))
        return cur.one()


def list_customer_orders(conn, customer_id: int, limit: int, after: int | None = None) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(_ORDERS_OF_CUSTOMER, (customer_id, after or 0, limit))
        return cur.all()


def find_by_idempotency_key(conn, key: str) -> dict | None:
    """The order placed earlier with this key (with its request fingerprint), or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, request_hash FROM orders WHERE idempotency_key = %s", (key,))
        return cur.one()


def lock_products(conn, product_ids: list[int]) -> dict[int, dict]:
    """Lock the products' rows (in id order, so concurrent orders cannot deadlock); id -> row."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, price_cents, stock FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                    (sorted(product_ids),))
        return {row["id"]: row for row in cur.all()}


def insert_order(conn, customer_id: int, lines: list[tuple[int, int, int]], idempotency_key: str | None,
                 request_hash: str | None) -> int:
    """Decrement stock, insert the order and its lines in one statement; return the new order id.

    `lines` are (product_id, quantity, unit_price_cents) for products already locked and checked.
    """
    product_ids = [line[0] for line in lines]
    quantities = [line[1] for line in lines]
    prices = [line[2] for line in lines]
    with conn.cursor() as cur:
        cur.execute("""
            WITH wanted AS (
                SELECT * FROM unnest(%(ids)s::bigint[], %(qty)s::int[], %(price)s::int[]) AS w(product_id, quantity, price)
            ), stock AS (
                UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
                FROM wanted w WHERE p.id = w.product_id RETURNING p.id
            ), new_order AS (
                INSERT INTO orders (customer_id, total_cents, idempotency_key, request_hash)
                SELECT %(customer)s, COALESCE(sum(quantity::bigint * price), 0), %(key)s, %(hash)s FROM wanted
                RETURNING id
            ), new_lines AS (
                INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
                SELECT new_order.id, w.product_id, w.quantity, w.price FROM new_order, wanted w
            )
            SELECT id FROM new_order
        """, {"ids": product_ids, "qty": quantities, "price": prices, "customer": customer_id,
              "key": idempotency_key, "hash": request_hash})
        return cur.fetchone()[0]
