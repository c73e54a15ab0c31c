"""Peer (a): the classic pattern. Plain Flask + psycopg2 ThreadedConnectionPool on gunicorn's gthread worker.

Same query and JSON as GET /api/customers/{id}. The pool is made lazily in each worker (after the fork),
which is the correct version of this pattern.
"""

import os
import threading

from flask import Flask, abort, jsonify
from psycopg2.pool import ThreadedConnectionPool

app = Flask(__name__)
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


@app.get("/api/customers/<int:customer_id>")
def get_customer(customer_id):
    conn = pool().getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, name, email, created_at FROM customers WHERE id = %s", (customer_id,))
            row = cur.fetchone()
        conn.rollback()
    finally:
        pool().putconn(conn)
    if row is None:
        abort(404)
    return jsonify(id=row[0], name=row[1], email=row[2], created_at=row[3].isoformat())


@app.get("/api/health")
def health():
    return jsonify(status="ok")
