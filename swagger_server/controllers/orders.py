"""Orders: place one (one transaction, stock checked and decremented, safe to retry), get one."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from connexion.context import context
from flask import request

from swagger_server import state as app_state
from swagger_server.controllers.conditional import answer, evaluate
from swagger_server.db.connection import transaction
from swagger_server.db.queries import customers, orders
from swagger_server.errors import Conflict, InsufficientStock, NotFound, UnprocessableEntity
from swagger_server.request_scope import get_conn, read_only

MAX_QUANTITY = 1000  # the spec's NewOrderLine.quantity maximum: per product, however many lines name it


class _KeyTaken(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


def create_order(body: dict):
    """Place an order. With an Idempotency-Key, a retry returns the original order (200) instead of a second one.

    Keys belong to the caller (its token) and are remembered for `[API] idempotency_ttl` seconds.
    """
    evaluate(None, exists=False)  # /api/orders has no GET: If-Match is 412, If-None-Match holds
    key = request.headers.get("Idempotency-Key")
    client = context["token_info"]["sub"]
    ttl = app_state.current().settings.api.idempotency_ttl
    wanted = Counter()
    for i, line in enumerate(body["lines"]):
        wanted[line["product_id"]] += line["quantity"]
        if wanted[line["product_id"]] > MAX_QUANTITY:
            # Lines of one product are merged; the spec's per-line maximum bounds their sum too. The
            # body is schema-valid, so this is 422 (its content cannot be processed), not 400.
            raise UnprocessableEntity(
                f"product {line['product_id']}: its lines add up to more than {MAX_QUANTITY}",
                field=f"lines[{i}].quantity",
            )
    fingerprint = hashlib.sha256(json.dumps([body["customer_id"], sorted(wanted.items())]).encode()).hexdigest()
    conn = get_conn()
    if key is not None:
        replay = _replay(conn, client, key, fingerprint, ttl)
        if replay is not None:
            return replay
    try:
        with transaction(conn):
            order = _place(conn, body["customer_id"], wanted)
            if key is not None and not orders.remember_idempotency_key(
                conn, client, key, order["id"], fingerprint, ttl
            ):
                raise _KeyTaken
    except _KeyTaken:
        # A concurrent request with the same key won the race (this order was rolled back): answer with its order.
        replay = _replay(conn, client, key, fingerprint, ttl)
        if replay is None:
            raise Conflict(
                "a request with this Idempotency-Key is in progress; retry shortly", field="Idempotency-Key"
            ) from None
        return replay
    # The order as the insert returned it: what GET /api/orders/{id} reads, without reading it again.
    return answer(order, 201, {"Location": f"/api/orders/{order['id']}"})


@read_only
def get_order(order_id: int):
    row = orders.get_order(get_conn(), order_id)
    if row is None:
        raise NotFound(f"order {order_id} not found")
    return answer(row)


def _place(conn, customer_id: int, wanted: Counter) -> dict:
    # Key-share lock: a concurrent delete of the customer waits for this order (and then finds it: 409).
    if not customers.lock_customer(conn, customer_id):
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    locked = orders.lock_products(conn, list(wanted))
    missing = sorted(set(wanted) - set(locked))
    if missing:
        raise NotFound(f"product {missing[0]} not found", field="lines")
    short = [pid for pid, qty in sorted(wanted.items()) if locked[pid]["stock"] < qty]
    if short:
        pid = short[0]
        raise InsufficientStock(
            f"product {pid}: {wanted[pid]} requested, {locked[pid]['stock']} in stock",
            field="lines",
            product_id=pid,
            requested=wanted[pid],
            available=locked[pid]["stock"],
        )
    lines = [(pid, qty, locked[pid]["price_cents"]) for pid, qty in sorted(wanted.items())]
    return orders.insert_order(conn, customer_id, lines)


def _replay(conn, client: str, key: str, fingerprint: str, ttl: float):
    earlier = orders.find_by_idempotency_key(conn, client, key, ttl, fingerprint)
    if earlier is None:
        return None
    if earlier["request_hash"] != fingerprint:
        raise UnprocessableEntity("this Idempotency-Key was used with a different order", field="Idempotency-Key")
    return answer(
        orders.get_order(conn, earlier["id"]),
        200,
        {"Idempotent-Replayed": "true", "Location": f"/api/orders/{earlier['id']}"},
    )
