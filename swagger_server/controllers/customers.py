"""Customers: list, get, create, update, delete, and a customer's orders."""

from __future__ import annotations

from swagger_server.controllers.reply import found, no_content, page, reply
from swagger_server.db.connection import transaction
from swagger_server.db.queries import customers, orders
from swagger_server.errors import NotFound
from swagger_server.request_scope import get_conn, read_only


@read_only
def list_customers(limit: int = 20, after: int | None = None, q: str | None = None):
    rows = customers.list_customers(get_conn(), limit + 1, after, q)
    return reply(page(rows, limit), 200)


@read_only
def get_customer(customer_id: int):
    return reply(found(customers.get_customer(get_conn(), customer_id), "customer", customer_id), 200)


# A taken email, or orders that keep a customer from being deleted, are the database's constraints,
# answered 409 in one place (errors.integrity_problem), races between requests included.
def create_customer(body: dict):
    conn = get_conn()
    with transaction(conn):
        row = customers.create_customer(conn, body["name"], body["email"])
    return reply(row, 201, {"Location": f"/api/customers/{row['id']}"})


def update_customer(customer_id: int, body: dict):
    conn = get_conn()
    with transaction(conn):
        row = customers.update_customer(conn, customer_id, body.get("name"), body.get("email"))
    return reply(found(row, "customer", customer_id), 200)


def delete_customer(customer_id: int):
    conn = get_conn()
    with transaction(conn):
        deleted = customers.delete_customer(conn, customer_id)
    if not deleted:
        raise NotFound(f"customer {customer_id} not found")
    return no_content()


@read_only
def list_customer_orders(customer_id: int, limit: int = 20, after: int | None = None):
    conn = get_conn()
    rows = orders.list_customer_orders(conn, customer_id, limit + 1, after)
    if not rows and customers.get_customer(conn, customer_id) is None:
        raise NotFound(f"customer {customer_id} not found")
    return reply(page(rows, limit), 200)
