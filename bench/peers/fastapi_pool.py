"""Peer (b): FastAPI + a psycopg2 ThreadedConnectionPool on the uvicorn worker.

Sync handlers run in Starlette's thread pool. Same query and JSON as GET /api/customers/{id}.
"""

import os
import threading

from fastapi import FastAPI, HTTPException
from psycopg2.pool import ThreadedConnectionPool

app = FastAPI()
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


@app.get("/api/customers/{customer_id}")
def get_customer(customer_id: int):
    conn = pool().getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, name, email, created_at FROM customers WHERE id = %s", (customer_id,))
            row = cur.fetchone()
        conn.rollback()
    finally:
        pool().putconn(conn)
    if row is None:
        raise HTTPException(status_code=404)
    return {"id": row[0], "name": row[1], "email": row[2], "created_at": row[3].isoformat()}


@app.get("/api/health")
def health():
    return {"status": "ok"}
