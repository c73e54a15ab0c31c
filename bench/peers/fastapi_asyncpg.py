"""Peer (c): FastAPI + asyncpg on the uvicorn worker, the fastest common Python stack.

Async handlers on the event loop, one asyncpg pool per worker (made in the lifespan, after the fork).
Same queries and JSON as GET /api/customers/{id} and POST /api/orders (one transaction: the customer
locked FOR KEY SHARE, the products FOR UPDATE, stock checked, one statement that decrements stock and
inserts the order and its lines, the order read back). Every request but /api/health needs a bearer
token, checked as we check ours (its SHA-256 digest compared in constant time with each configured
one, from API_TOKENS), through FastAPI's own HTTPBearer; the order body is a pydantic model with the
spec's bounds. No metrics, no access log, no ETags, no Idempotency-Key, no admission control: the
distance to it is the price of what this service does on every request.
"""

import contextlib
import hashlib
import hmac
import json
import os
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

_KNOWN = [hashlib.sha256(t.encode()).digest() for t in os.environ.get("API_TOKENS", "").split(",") if t]
_bearer = HTTPBearer()


def token(credentials: Annotated[HTTPAuthorizationCredentials, Depends(_bearer)]) -> str:
    candidate = hashlib.sha256(credentials.credentials.encode()).digest()
    if not any([hmac.compare_digest(candidate, known) for known in _KNOWN]):
        raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return candidate.hex()[:16]


@contextlib.asynccontextmanager
async def lifespan(app):
    size = int(os.environ.get("PEER_POOL_MAX", "10"))
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=size)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/api/customers/{customer_id}")
async def get_customer(customer_id: int, _: Annotated[str, Depends(token)]):
    row = await app.state.pool.fetchrow("SELECT id, name, email, created_at FROM customers WHERE id = $1", customer_id)
    if row is None:
        raise HTTPException(status_code=404)
    return {"id": row["id"], "name": row["name"], "email": row["email"], "created_at": row["created_at"].isoformat()}


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=1000)


class NewOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: int = Field(ge=1)
    lines: list[Line] = Field(min_length=1, max_length=100)


_INSERT = """
    WITH wanted AS (
        SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[]) AS w(product_id, quantity, price)
    ), stock AS (
        UPDATE products p SET stock = p.stock - w.quantity, updated_at = now()
        FROM wanted w WHERE p.id = w.product_id RETURNING p.id
    ), new_order AS (
        INSERT INTO orders (customer_id, total_cents)
        SELECT $4, COALESCE(sum(quantity::bigint * price), 0) FROM wanted
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
    WHERE o.id = $1 GROUP BY o.id
"""


@app.post("/api/orders", status_code=201)
async def create_order(order: NewOrder, response: Response, _: Annotated[str, Depends(token)]):
    wanted: dict[int, int] = {}
    for line in order.lines:
        wanted[line.product_id] = wanted.get(line.product_id, 0) + line.quantity
    async with app.state.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT id FROM customers WHERE id = $1 FOR KEY SHARE", order.customer_id) is None:
            raise HTTPException(status_code=404, detail=f"customer {order.customer_id} not found")
        rows = await conn.fetch(
            "SELECT id, price_cents, stock FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE", list(wanted)
        )
        locked = {row["id"]: row for row in rows}
        if set(wanted) - set(locked):
            raise HTTPException(status_code=404, detail="product not found")
        if any(locked[pid]["stock"] < qty for pid, qty in wanted.items()):
            raise HTTPException(status_code=409, detail="insufficient stock")
        ids = sorted(wanted)
        order_id = await conn.fetchval(
            _INSERT, ids, [wanted[i] for i in ids], [locked[i]["price_cents"] for i in ids], order.customer_id
        )
        row = await conn.fetchrow(_ORDER, order_id)
    response.headers["Location"] = f"/api/orders/{order_id}"
    return {
        "id": row["id"],
        "customer_id": row["customer_id"],
        "status": row["status"],
        "total_cents": row["total_cents"],
        "created_at": row["created_at"].isoformat(),
        "version": row["version"],
        "lines": json.loads(row["lines"]),
    }


@app.get("/api/health")
async def health():
    return {"status": "ok"}
