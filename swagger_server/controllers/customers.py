"""Customers: list, get, create, update, delete, and a customer's orders."""

from __future__ import annotations

from swagger_server.controllers.conditional import (
    answer,
    answer_page,
    evaluate,
    not_written,
    page_etag,
    write_condition,
)
from swagger_server.controllers.reply import found, no_content, page
from swagger_server.db.connection import transaction
from swagger_server.db.queries import customers, orders
from swagger_server.errors import ApiError, NotFound
from swagger_server.request_scope import get_conn, read_only
from swagger_server.text import canonical


@read_only
def list_customers(limit: int = 20, after: int | None = None, q: str | None = None):
    # Names are stored in NFC (text.py): a search in another normal form finds them too. The spec's
    # pattern asks for three letters or digits in a row; NFC may join one to a combining mark after it,
    # so the rule is checked again on what is searched.
    term = None if q is None else canonical(q)
    if term is not None and not customers.searchable(term):
        raise ApiError(customers.SEARCH_RULE, field="q")
    rows = customers.list_customers(get_conn(), limit + 1, after, term)
    return answer_page(page(rows, limit))


@read_only
def get_customer(customer_id: int):
    return answer(found(customers.get_customer(get_conn(), customer_id), "customer", customer_id))


# A taken email, or orders that keep a customer from being deleted, are the database's constraints,
# answered 409 in one place (errors.integrity_problem), races between requests included.
def create_customer(body: dict):
    conn = get_conn()
    # The conditions, against the collection (what GET /api/customers would answer).
    evaluate(lambda: page_etag(page(customers.list_customers(conn, 21, None, None), 20)))
    with transaction(conn):
        row = customers.create_customer(conn, body["name"], body["email"])
    return answer(row, 201, {"Location": f"/api/customers/{row['id']}"})


def update_customer(customer_id: int, body: dict):
    condition = write_condition()
    conn = get_conn()
    with transaction(conn):
        row = (
            None
            if condition.none
            else customers.update_customer(conn, customer_id, body.get("name"), body.get("email"), condition)
        )
        if row is None:
            not_written(customers.customer_version(conn, customer_id), "customer", customer_id, condition)
    return answer(row)


def delete_customer(customer_id: int):
    condition = write_condition()
    conn = get_conn()
    with transaction(conn):
        if condition.none or not customers.delete_customer(conn, customer_id, condition):
            not_written(customers.customer_version(conn, customer_id), "customer", customer_id, condition)
    return no_content()


@read_only
def list_customer_orders(customer_id: int, limit: int = 20, after: int | None = None):
    conn = get_conn()
    rows = orders.list_customer_orders(conn, customer_id, limit + 1, after)
    if not rows and customers.get_customer(conn, customer_id) is None:
        raise NotFound(f"customer {customer_id} not found")
    return answer_page(page(rows, limit))
