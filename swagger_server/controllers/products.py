"""Products: list, get, create, update."""

from __future__ import annotations

from swagger_server.controllers.conditional import (
    answer,
    answer_page,
    evaluate,
    not_written,
    page_etag,
    write_condition,
)
from swagger_server.controllers.reply import found, page
from swagger_server.db.connection import transaction
from swagger_server.db.queries import products
from swagger_server.request_scope import get_conn, read_only


@read_only
def list_products(limit: int = 20, after: int | None = None, in_stock: bool | None = None):
    return answer_page(page(products.list_products(get_conn(), limit + 1, after, in_stock), limit))


@read_only
def get_product(product_id: int):
    return answer(found(products.get_product(get_conn(), product_id), "product", product_id))


def create_product(body: dict):
    conn = get_conn()
    # The conditions, against the collection (what GET /api/products would answer).
    evaluate(lambda: page_etag(page(products.list_products(conn, 21, None, None), 20)))
    # A taken SKU is the database's unique constraint: 409 in one place (errors.integrity_problem).
    with transaction(conn):
        row = products.create_product(
            conn, body["sku"], body["name"], body["price_cents"], body["stock"], body.get("description", "")
        )
    return answer(row, 201, {"Location": f"/api/products/{row['id']}"})


def update_product(product_id: int, body: dict):
    condition = write_condition()
    conn = get_conn()
    with transaction(conn):
        row = None if condition.none else products.update_product(conn, product_id, body, condition)
        if row is None:
            not_written(products.product_version(conn, product_id), "product", product_id, condition)
    return answer(row)
