"""A key bound to one customer reads and changes that customer and its orders only (API1:2023,
broken object-level authorization): enforced by PostgreSQL's row-level security (schema 020), with
the role and the customer set in the same message as each statement (db/connection.py), and by the
spec's `x-customer-scoped` for the operations that are not a customer's (403).

Generated from the spec: every operation is tried with two customers' keys against each customer's
ids; an operation this file does not know fails `test_every_operation_is_tried`, naming it."""

from __future__ import annotations

import pytest
import yaml

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.app import SPEC_DIR
from swagger_server.identity.keys import new_key
from tests.support.auth import AUTH
from tests.support.database import make_settings, query

SPEC = yaml.safe_load((SPEC_DIR / "swagger.yaml").read_text(encoding="utf-8"))
OPERATIONS = {
    op["operationId"]: (method.upper(), path, op)
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    if isinstance(op, dict) and "operationId" in op
}
LINE = {"product_id": 1, "quantity": 1}


def calls(owner: dict) -> dict:
    """How to call each operation on `owner`'s rows ({"customer": id, "order": id}): (method, path,
    body). A new operation must be added here (and its rule to docs/ADDING_AN_ENDPOINT.md)."""
    c, o = owner["customer"], owner["order"]
    return {
        "list_customers": ("GET", "/api/customers", None),
        "create_customer": ("POST", "/api/customers", {"name": "New", "email": "new@example.com"}),
        "get_customer": ("GET", f"/api/customers/{c}", None),
        "update_customer": ("PATCH", f"/api/customers/{c}", {"name": "Renamed"}),
        "delete_customer": ("DELETE", f"/api/customers/{c}", None),
        "list_customer_orders": ("GET", f"/api/customers/{c}/orders", None),
        "list_products": ("GET", "/api/products", None),
        "create_product": ("POST", "/api/products", {"sku": "NEW-1", "name": "N", "price_cents": 1, "stock": 1}),
        "get_product": ("GET", "/api/products/1", None),
        "update_product": ("PATCH", "/api/products/1", {"stock": 99}),
        "create_order": ("POST", "/api/orders", {"customer_id": c, "lines": [LINE]}),
        "get_order": ("GET", f"/api/orders/{o}", None),
        "get_dashboard": ("GET", "/api/dashboard", None),
        "get_health": ("GET", "/api/health", None),
        "get_ready": ("GET", "/api/health/ready", None),
        "get_db_health": ("GET", "/api/health/db", None),
        "test_db": ("GET", "/api/health/db/test", None),
        "list_keys": ("GET", "/api/keys", None),
        "create_key": ("POST", "/api/keys", {"scopes": ["read"], "customer_id": c}),
        "revoke_key": ("DELETE", "/api/keys/abcdefgh2345", None),
    }


@pytest.fixture
def two(store):
    """Customers 1 and 2 with an order each (1 has two), and a write key bound to each."""
    query(store, "INSERT INTO orders (customer_id, total_cents) VALUES (2, 1000) RETURNING id")
    query(store, "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents) VALUES (3, 1, 1, 1000)")
    owners = {}
    for customer, order in ((1, 1), (2, 3)):
        key_id, token, digest = new_key()
        query(
            store,
            "INSERT INTO api_keys (id, secret_sha256, scopes, customer_id) VALUES (%s, %s, '{write}', %s)",
            (key_id, digest, customer),
        )
        owners[customer] = {"customer": customer, "order": order, "auth": {"Authorization": f"Bearer {token}"}}
    return owners


@pytest.fixture
def client(database_url):
    app = create_app(make_settings(database_url, api={"key_refresh": 0.1}))
    with app.test_client() as client:
        yield client
    get_database(app).close()


def send(client, call, auth):
    method, path, body = call
    return client.request(method, path, json=body, headers=auth)


def ready(client, owners):
    for owner in owners.values():
        wait_until(lambda o=owner: client.get("/api/customers", headers=o["auth"]).status_code == 200, timeout=5)


def test_every_operation_is_tried():
    known = set(calls({"customer": 1, "order": 1}))
    assert set(OPERATIONS) <= known, f"operations no test tries with bound keys: {sorted(set(OPERATIONS) - known)}"
    for name, (_, _, op) in OPERATIONS.items():
        if op.get("security") is not None and op["security"] != []:
            assert isinstance(op.get("x-customer-scoped"), bool), (
                f"{name}: say whether a key bound to one customer may call it (x-customer-scoped: true, its"
                " rows then limited by row-level security; false: 403)"
            )


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_a_bound_key_reaches_its_own_rows_only(client, store, two, name):
    ready(client, two)
    method, path, op = OPERATIONS[name]
    public = not op.get("security")
    mine, theirs = two[1], two[2]
    before = snapshot(store)
    other = send(client, calls(theirs)[name], mine["auth"])
    if public:
        assert other.status_code < 400, other.text  # open to everyone, bound or not
        return
    if not op["x-customer-scoped"]:
        assert other.status_code == 403, other.text
        assert "bound to one customer" in other.json()["detail"]
        assert send(client, calls(mine)[name], mine["auth"]).status_code == 403
        assert snapshot(store) == before
        return
    # Another customer's rows: as if they did not exist (the same answer as an id that does not).
    if name == "list_customers":
        listed = [c["id"] for c in client.get("/api/customers", headers=mine["auth"]).json()["items"]]
        searched = client.get("/api/customers?q=Turing", headers=mine["auth"]).json()["items"]
        assert (listed, searched) == ([1], [])
        return
    absent = send(client, calls({"customer": 999, "order": 999})[name], mine["auth"])
    assert other.status_code == absent.status_code == 404, (other.text, absent.text)
    assert other.json()["detail"].replace("2", "N").replace("3", "N") == absent.json()["detail"].replace("999", "N")
    assert snapshot(store) == before, "another customer's rows changed"
    # Its own: served.
    own = send(client, calls(mine)[name], mine["auth"])
    assert own.status_code in (200, 201, 204, 409), own.text  # 409: customer 1 has orders, it stays


def snapshot(conn):
    return (
        query(conn, "SELECT id, name, email, version FROM customers ORDER BY id"),
        query(conn, "SELECT id, customer_id, version FROM orders ORDER BY id"),
        query(conn, "SELECT order_id, product_id, quantity FROM order_lines ORDER BY order_id, product_id"),
        query(conn, "SELECT id, stock, version FROM products ORDER BY id"),
    )


def test_an_unbound_caller_still_sees_every_row(client, store, two):
    ready(client, two)
    assert [c["id"] for c in client.get("/api/customers", headers=AUTH).json()["items"]] == [1, 2, 3]
    assert client.get("/api/orders/3", headers=AUTH).status_code == 200


def test_idempotency_keys_belong_to_the_key(client, store, two):
    ready(client, two)
    first = client.post(
        "/api/orders", json={"customer_id": 1, "lines": [LINE]}, headers={**two[1]["auth"], "Idempotency-Key": "k1"}
    )
    again = client.post(
        "/api/orders", json={"customer_id": 1, "lines": [LINE]}, headers={**two[1]["auth"], "Idempotency-Key": "k1"}
    )
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    # The other customer's key with the same Idempotency-Key finds nothing of it (and may not order for 1).
    theirs = client.post(
        "/api/orders", json={"customer_id": 1, "lines": [LINE]}, headers={**two[2]["auth"], "Idempotency-Key": "k1"}
    )
    assert theirs.status_code == 404, theirs.text


def test_a_service_role_that_is_neither_owner_nor_superuser_serves_both_kinds(database_url, store, two):
    """The tests above connect as the superuser, whom row-level security never restricts by itself. A
    service role that only has rights on the rows (the usual production split) sees every row unbound
    (the permissive policy) and is restricted when bound; granted store_bound without inheriting it, so
    that the restrictive policy does not follow it everywhere."""
    from urllib.parse import urlsplit, urlunsplit

    if query(store, "SELECT 1 FROM pg_roles WHERE rolname = 'store_app_test'"):  # left by an interrupted run
        query(store, "DROP OWNED BY store_app_test CASCADE")
        query(store, "DROP ROLE store_app_test")
    query(store, "CREATE ROLE store_app_test LOGIN")
    query(store, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO store_app_test")
    query(store, "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO store_app_test")
    query(store, "GRANT store_bound TO store_app_test WITH INHERIT FALSE, SET TRUE")
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(netloc="store_app_test@" + parts.netloc.split("@")[-1]))
    app = create_app(make_settings(url, api={"key_refresh": 0.1}))
    try:
        with app.test_client() as client:
            ready(client, two)
            assert [c["id"] for c in client.get("/api/customers", headers=AUTH).json()["items"]] == [1, 2, 3]
            assert [c["id"] for c in client.get("/api/customers", headers=two[2]["auth"]).json()["items"]] == [2]
            assert client.get("/api/orders/1", headers=two[2]["auth"]).status_code == 404
            made = client.post("/api/orders", json={"customer_id": 2, "lines": [LINE]}, headers=two[2]["auth"])
            assert made.status_code == 201, made.text
    finally:
        get_database(app).close()
        query(store, "DROP OWNED BY store_app_test CASCADE")
        query(store, "DROP ROLE store_app_test")


def test_every_requirement_names_a_scheme_and_the_operations_scope():
    """What Spectral's oas3-operation-security-defined checked before it was turned off for the
    openIdConnect scopes (.spectral.yaml): every requirement names a defined scheme, and the OpenID
    scheme asks for the scope the operation needs (x-required-scope)."""
    schemes = SPEC["components"]["securitySchemes"]
    for name, (_, _, op) in OPERATIONS.items():
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes), (name, requirement)
            if "openIdConnect" in requirement:
                assert requirement["openIdConnect"] == [op["x-required-scope"]], name


def test_the_served_spec_offers_the_provider_that_is_configured_or_none():
    import copy

    from swagger_server.security import for_deployment

    without = for_deployment(copy.deepcopy(SPEC), "")
    assert "openIdConnect" not in without["components"]["securitySchemes"]
    assert all(
        r == {"bearerAuth": []}
        for path in without["paths"].values()
        for op in path.values()
        if isinstance(op, dict)
        for r in op.get("security", [])
    )
    named = for_deployment(copy.deepcopy(SPEC), "https://login.example.org/realm/")
    assert named["components"]["securitySchemes"]["openIdConnect"]["openIdConnectUrl"] == (
        "https://login.example.org/realm/.well-known/openid-configuration"
    )
