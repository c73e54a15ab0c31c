"""Peer (c): FastAPI + asyncpg on the uvicorn worker, the fastest common Python stack.

Async handlers on the event loop, one asyncpg pool per worker (made in the lifespan, after the fork).
Same query and JSON as GET /api/customers/{id}. No spec validation, no auth, no metrics, no access log:
the distance to it is the price of what this service does on every request.
"""

import contextlib
import os

import asyncpg
from fastapi import FastAPI, HTTPException


@contextlib.asynccontextmanager
async def lifespan(app):
    size = int(os.environ.get("PEER_POOL_MAX", "10"))
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=size)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/api/customers/{customer_id}")
async def get_customer(customer_id: int):
    row = await app.state.pool.fetchrow("SELECT id, name, email, created_at FROM customers WHERE id = $1", customer_id)
    if row is None:
        raise HTTPException(status_code=404)
    return {"id": row["id"], "name": row["name"], "email": row["email"], "created_at": row["created_at"].isoformat()}


@app.get("/api/health")
async def health():
    return {"status": "ok"}
