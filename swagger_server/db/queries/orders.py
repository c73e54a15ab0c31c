"""SQL for orders. Placing an order is several statements; the caller runs them in one transaction."""

from __future__ import annotations

_ORDER_BY_ID = """
    SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at, o.version,
           COALESCE(json_agg(json_build_object('product_id', l.product_id, 'quantity', l.quantity,
                                               'unit_price_cents', l.unit_price_cents)
                             ORDER BY l.product_id) FILTER (WHERE l.order_id IS NOT NULL), '[]') AS lines
    FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
    WHERE o.id = %s GROUP BY o.id
"""

_ORDERS_OF_CUSTOMER = """
    SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at, o.version,
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


def find_by_idempotency_key(conn, client: str, key: str, ttl: float, request_hash: str) -> dict | None:
    """The order `client` placed with this key within the last `ttl` seconds (with its request
    fingerprint), or None.

    Also a key stored before keys belonged to a client (002 copied those with client ''), but only for
    the same request: what the release that stored it would have replayed, so a client retrying
    across that upgrade finds its order instead of placing a second one. One round trip either way.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT order_id AS id, request_hash FROM idempotency_keys WHERE key = %(key)s"
            " AND (client = %(client)s OR (client = '' AND request_hash = %(hash)s))"
            " AND created_at > now() - %(ttl)s * interval '1 second' ORDER BY client DESC LIMIT 1",
            {"client": client, "key": key, "ttl": ttl, "hash": request_hash},
        )
        return cur.one()


def remember_idempotency_key(conn, client: str, key: str, order_id: int, request_hash: str, ttl: float) -> bool:
    """Record that `client` placed `order_id` with `key`; False if the key is taken (and unexpired).

    An expired row for the same key is overwritten. Up to 100 other expired rows are purged in the
    same statement, so the table never grows beyond one TTL's worth of keys.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH purge AS (
                DELETE FROM idempotency_keys WHERE ctid IN (
                    SELECT ctid FROM idempotency_keys
                    WHERE created_at < now() - %(ttl)s * interval '1 second'
                      AND NOT (client = %(client)s AND key = %(key)s)
                    LIMIT 100)
            )
            INSERT INTO idempotency_keys AS k (client, key, order_id, request_hash)
            VALUES (%(client)s, %(key)s, %(order)s, %(hash)s)
            ON CONFLICT (client, key) DO UPDATE
                SET order_id = EXCLUDED.order_id, request_hash = EXCLUDED.request_hash, created_at = now()
                WHERE k.created_at < now() - %(ttl)s * interval '1 second'
            RETURNING order_id
        """,
            {"client": client, "key": key, "order": order_id, "hash": request_hash, "ttl": ttl},
        )
        return cur.fetchone() is not None


def lock_products(conn, product_ids: list[int]) -> dict[int, dict]:
    """Lock the products' rows (in id order, so concurrent orders cannot deadlock); id -> row."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, price_cents, stock FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (sorted(product_ids),),
        )
        return {row["id"]: row for row in cur.all()}


def insert_order(conn, customer_id: int, lines: list[tuple[int, int, int]]) -> dict:
    """Decrement stock, insert the order and its lines in one statement; return the new order as
    get_order() reads it (the same columns, the lines in the same order), with no second round trip.
    The lines answered are the ones inserted, read from `wanted`, not returned by the insert: a caller
    bound to one customer could not read them back in this statement (schema 020).

    `lines` are (product_id, quantity, unit_price_cents) for products already locked and checked.
    """
    product_ids = [line[0] for line in lines]
    quantities = [line[1] for line in lines]
    prices = [line[2] for line in lines]
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH wanted AS (
                SELECT * FROM unnest(%(ids)s::bigint[], %(qty)s::int[], %(price)s::int[]) AS w(product_id, quantity, price)
            ), stock AS (
                UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
                FROM wanted w WHERE p.id = w.product_id RETURNING p.id
            ), new_order AS (
                INSERT INTO orders (customer_id, total_cents)
                SELECT %(customer)s, COALESCE(sum(quantity::bigint * price), 0) FROM wanted
                RETURNING id, customer_id, status, total_cents, created_at, version
            ), new_lines AS (
                INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
                SELECT new_order.id, w.product_id, w.quantity, w.price FROM new_order, wanted w
            )
            SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at, o.version,
                   COALESCE((SELECT json_agg(json_build_object('product_id', w.product_id, 'quantity', w.quantity,
                                                               'unit_price_cents', w.price)
                                             ORDER BY w.product_id) FROM wanted w), '[]') AS lines
            FROM new_order o
        """,
            {"ids": product_ids, "qty": quantities, "price": prices, "customer": customer_id},
        )
        return cur.one()
