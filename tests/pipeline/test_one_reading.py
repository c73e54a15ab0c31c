"""One reading of each request (issue 19): the values the validators check are the values the handler
gets, patterns mean what JSON Schema says, and every integrity error has its answer.

Each "nobody reads it again" test first breaks the second reader (Flask's JSON parser, werkzeug's
query parser), so that a second reading would fail the request: the test passes only while the
handler gets the validated values.
"""

from __future__ import annotations

import re

import flask
import pytest

from swagger_server.app import load_spec
from swagger_server.controllers.orders import MAX_QUANTITY
from swagger_server.db import constraints
from swagger_server.validation import EcmaValidator, ecma_regex
from tests.support.database import query


def test_the_handler_gets_the_validated_body_not_a_second_parse(app, client, store):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the body was parsed a second time")

    app.app.json.loads = refuse
    response = client.post("/api/customers", json={"name": "Once", "email": "once@example.com"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Once"


def test_the_handler_gets_the_validated_query_not_a_second_parse(app, client, store):
    class NoArgs(flask.Request):
        @property
        def args(self):
            raise AssertionError("the query was parsed a second time")

    app.app.request_class = NoArgs
    response = client.get("/api/customers?limit=1&q=ada")
    assert response.status_code == 200, response.text
    assert [c["id"] for c in response.json()["items"]] == [1]


def test_the_handler_sees_the_one_canonical_media_type(app, client, store):
    seen = []
    app.app.before_request(lambda: seen.append(flask.request.environ.get("CONTENT_TYPE")))
    response = client.post(
        "/api/customers",
        content=b'{"name":"Case","email":"case@example.com"}',
        headers={"Content-Type": "Application/JSON ; Charset=UTF-8"},
    )
    assert response.status_code == 201
    assert seen == ["application/json"]


@pytest.mark.parametrize(
    "pattern, value",
    [
        ("^[^\\x00-\\x1F\\x7F-\\x9F]+$", "name\n"),
        ("^[A-Za-z0-9.]+@[A-Za-z0-9.]+$", "ada@example.com\n"),
        ("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", "0/1\n"),
    ],
)
def test_patterns_are_ecma_262_where_python_would_accept_a_trailing_newline(pattern, value):
    assert re.search(pattern, value), "Python's $ matches before the newline (the difference exists)"
    assert ecma_regex(pattern).find(value) is None
    assert ecma_regex(pattern).find(value[:-1]) is not None
    assert next(EcmaValidator({"type": "string", "pattern": pattern}).iter_errors(value)).validator == "pattern"


def test_every_text_field_of_the_spec_refuses_control_characters():
    # Every string member of every request body, read from the spec: a new resource's fields are
    # checked without being named here.
    spec = load_spec()
    schemas = spec["components"]["schemas"]
    bodies = {
        media["schema"]["$ref"].rsplit("/", 1)[1]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "requestBody" in operation
        for media in operation["requestBody"]["content"].values()
    }
    fields = [
        (name, member, schema)
        for name in sorted(bodies)
        for member, schema in schemas[name].get("properties", {}).items()
        if schema.get("type") == "string"
    ]
    assert {"NewCustomer", "CustomerUpdate", "NewProduct", "ProductUpdate", "NewOrder"} <= bodies
    assert ("NewProduct", "sku") in {(name, member) for name, member, _ in fields}
    for name, member, schema in fields:
        for control in ("\x00", "\t", "\n", "\x1b", "\x7f", "\x85"):
            value = "ok" + control if member != "email" else "a@b.co" + control
            errors_found = list(EcmaValidator(schema).iter_errors(value))
            assert errors_found, f"{name}.{member} accepts {control!r}"


def test_the_merged_quantity_limit_is_the_specs_line_maximum(client, store):
    spec = load_spec()
    assert MAX_QUANTITY == spec["components"]["schemas"]["NewOrderLine"]["properties"]["quantity"]["maximum"]
    query(store, "UPDATE products SET stock = 5000 WHERE id = 1")
    lines = [{"product_id": 1, "quantity": 600}, {"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 600}]
    response = client.post("/api/orders", json={"customer_id": 1, "lines": lines})
    assert response.status_code == 422
    assert response.json()["field"] == "lines[2].quantity"
    assert query(store, "SELECT stock FROM products WHERE id = 1") == [(5000,)]
    lines[2]["quantity"] = 400  # 1000 in all: the maximum, allowed
    assert client.post("/api/orders", json={"customer_id": 1, "lines": lines}).status_code == 201
    assert query(store, "SELECT stock FROM products WHERE id = 1") == [(4000,)]


def test_every_unique_and_foreign_key_of_the_schema_has_its_answer(store):
    found = query(
        store,
        "SELECT conname, contype FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        " AND contype IN ('u', 'f') AND conrelid::regclass::text <> 'schema_migrations'"
        " UNION SELECT indexrelid::regclass::text, 'u' FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " WHERE i.indisunique AND NOT i.indisprimary AND c.relnamespace = 'public'::regnamespace"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = i.indexrelid)",
    )
    unique = {name for name, kind in found if kind == "u"}
    foreign = {name for name, kind in found if kind == "f"}
    assert unique and foreign
    # Keys whose violation a request can cause name their field; the rest cannot be reached by a
    # request (an order's own lines and keys reference the order being written in that transaction).
    unreachable = {"order_lines_order_id_fkey", "idempotency_keys_order_id_fkey", "orders_idempotency_key_key"}
    assert unique - unreachable <= set(constraints.UNIQUE), unique - set(constraints.UNIQUE)
    assert foreign - unreachable <= set(constraints.REFERENCES), foreign - set(constraints.REFERENCES)
    # The text rule's checks, one a column, each names its field (the answer when the database's
    # Unicode is older than the API's: db/unicode.py).
    texts = {
        name
        for (name,) in query(
            store, "SELECT conname FROM pg_constraint WHERE conname ~ '_(canonical|ascii)$' OR conname ~ '_length$'"
        )
    }
    assert texts == set(constraints.TEXT_RULES), texts
