"""Peer (d): the classic design done the tutorial way on Connexion 3.

What a user gets by following Connexion's and Flask's documentation: `connexion.FlaskApp` with its
default middleware (Swagger UI, routing, security, validation; Flask behind a2wsgi's thread pool), a
psycopg2 `ThreadedConnectionPool` made lazily per worker, the request's connection on `flask.g`, given
back in `teardown_appcontext`. The same queries, token check (SHA-256 digest, constant-time compare)
and JSON as ours; run under gunicorn with the uvicorn worker, as Connexion's docs deploy it.
"""

import hashlib
import hmac
import os
import threading
from pathlib import Path

import connexion
from flask import g
from psycopg2.pool import ThreadedConnectionPool

_KNOWN = [hashlib.sha256(t.encode()).digest() for t in os.environ.get("API_TOKENS", "").split(",") if t]
_pool = None
_lock = threading.Lock()


def pool() -> ThreadedConnectionPool:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadedConnectionPool(
                    2, int(os.environ.get("PEER_POOL_MAX", "10")), os.environ["DATABASE_URL"]
                )
    return _pool


def get_db():
    if "db" not in g:
        g.db = pool().getconn()
    return g.db


def check_token(token):
    candidate = hashlib.sha256(token.encode()).digest()
    if any([hmac.compare_digest(candidate, known) for known in _KNOWN]):
        return {"sub": candidate.hex()[:16]}
    return None


def health():
    return {"status": "ok"}


def get_customer(customer_id):
    with get_db().cursor() as cur:
        cur.execute("SELECT id, name, email, created_at FROM customers WHERE id = %s", (customer_id,))
        row = cur.fetchone()
    get_db().rollback()
    if row is None:
        return {"title": "Not Found", "status": 404}, 404
    return {"id": row[0], "name": row[1], "email": row[2], "created_at": row[3].isoformat()}


def create_order(body):
    wanted = {}
    for line in body["lines"]:
        wanted[line["product_id"]] = wanted.get(line["product_id"], 0) + line["quantity"]
    conn = get_db()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM customers WHERE id = %s FOR KEY SHARE", (body["customer_id"],))
            if cur.fetchone() is None:
                conn.rollback()
                return {"title": "Not Found", "status": 404}, 404
            cur.execute(
                "SELECT id, price_cents, stock FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (list(wanted),)
            )
            locked = {row[0]: row for row in cur.fetchall()}
            if set(wanted) - set(locked) or any(locked[p][2] < q for p, q in wanted.items()):
                conn.rollback()
                return {"title": "Conflict", "status": 409}, 409
            ids = sorted(wanted)
            cur.execute(
                _INSERT,
                {
                    "ids": ids,
                    "qty": [wanted[i] for i in ids],
                    "price": [locked[i][1] for i in ids],
                    "customer": body["customer_id"],
                },
            )
            order_id = cur.fetchone()[0]
            cur.execute(_ORDER, (order_id,))
            row = cur.fetchone()
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    order = dict(
        zip(("id", "customer_id", "status", "total_cents", "created_at", "version", "lines"), row, strict=True)
    )
    order["created_at"] = order["created_at"].isoformat()
    return order, 201, {"Location": f"/api/orders/{order_id}"}


_INSERT = """
    WITH wanted AS (
        SELECT * FROM unnest(%(ids)s::bigint[], %(qty)s::int[], %(price)s::int[]) AS w(product_id, quantity, price)
    ), stock AS (
        UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
        FROM wanted w WHERE p.id = w.product_id RETURNING p.id
    ), new_order AS (
        INSERT INTO orders (customer_id, total_cents)
        SELECT %(customer)s, COALESCE(sum(quantity::bigint * price), 0) FROM wanted
        RETURNING id
    ), new_lines AS (
        INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
        SELECT new_order.id, w.product_id, w.quantity, w.price FROM new_order, wanted w
    )
    SELECT id FROM new_order
"""
_ORDER = """
    SELECT o.id, o.customer_id, o.status, o.total_cents, o.created_at, o.version,
           COALESCE(json_agg(json_build_object('product_id', l.product_id, 'quantity', l.quantity,
                                               'unit_price_cents', l.unit_price_cents)
                             ORDER BY l.product_id) FILTER (WHERE l.order_id IS NOT NULL), '[]') AS lines
    FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
    WHERE o.id = %s GROUP BY o.id
"""

app = connexion.FlaskApp(__name__, specification_dir=str(Path(__file__).parent))
app.add_api("openapi.yaml")


@app.app.teardown_appcontext
def return_connection(exc):
    conn = g.pop("db", None)
    if conn is not None:
        pool().putconn(conn)
