"""The work a body may cost before it is refused is bounded by what the spec allows, not by what was
sent (issue 42, class 1): a body longer than any valid body of its operation (twice the schema's
largest compact form, plus 4 KiB of whitespace: sizes.most_bytes) is refused 413 by its length before
a parser reads it; within that, an array, object or string over its schema's size is refused by its
size before jsonschema walks the body; and the parse and the checks run in a thread, off the event
loop. 150 000 lines where 100 are allowed took jsonschema 4 s of the event loop."""

from __future__ import annotations

import json

import pytest
from connexion.json_schema import resolve_refs

from swagger_server import create_app, get_database, validation
from swagger_server.app import checked_spec
from swagger_server.sizes import most_bytes
from tests.support.auth import AUTH
from tests.support.database import make_settings


@pytest.fixture
def walks(monkeypatch):
    """How many times jsonschema validated a body (the observer of the work done)."""
    count = {"n": 0}
    original = validation.EcmaRequestValidator.iter_errors

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(validation.EcmaRequestValidator, "iter_errors", counted)
    return count


@pytest.mark.parametrize(
    "body, field, detail",
    [
        (
            {"customer_id": 1, "lines": [{"product_id": "x"}] * 2_000},
            "lines",
            "'lines' has 2000 items; at most 100",
        ),
        (
            {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1, "note": "x" * 10}] * 50},
            "lines[0].note",
            None,
        ),
    ],
    ids=["an array over maxItems, every item wrong too", "an unknown member (jsonschema's to find)"],
)
def test_a_body_over_its_sizes_is_refused_before_anything_walks_it(database_url, store, walks, body, field, detail):
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            answer = client.post("/api/orders", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == field, answer.json()
        if detail is not None:
            assert answer.json()["detail"].startswith(detail), answer.json()
            assert walks["n"] == 0  # refused by its size: jsonschema never walked the 2 000 items
        else:
            assert walks["n"] >= 1  # the observer: within its sizes, jsonschema validates it
    finally:
        get_database(app).close()


def test_a_string_over_its_max_length_is_refused_by_its_length(database_url, store, walks):
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            answer = client.post("/api/customers", json={"name": "n" * 1_000, "email": "a@example.com"})
        assert answer.status_code == 400 and answer.json()["field"] == "name", answer.text
        assert answer.json()["detail"] == "'name' is 1000 characters long; at most 200 are allowed"
        assert walks["n"] == 0
    finally:
        get_database(app).close()


@pytest.fixture
def parses(monkeypatch):
    """How many bodies were parsed as JSON (the observer of the work done before a refusal)."""
    count = {"n": 0}
    original = validation.json.loads

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(validation.json, "loads", counted)
    return count


def order_schema() -> dict:
    return resolve_refs(checked_spec())["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]


def test_a_body_longer_than_any_valid_one_is_refused_by_its_length_before_it_is_parsed(database_url, store, parses):
    """The review's body: 150 000 small lines (300 KB; 100 lines are allowed) is refused 413 naming the
    body and the bound, unparsed. A body of the bound's length is parsed (the observer)."""
    most = 2 * most_bytes(order_schema()) + validation.WHITESPACE_BYTES
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            flood = '{"customer_id": 1, "lines": [' + ",".join(["{}"] * 150_000) + "]}"
            answer = client.post("/api/orders", content=flood, headers={"Content-Type": "application/json"})
            parsed = parses["n"]  # before the test reads the answer (which parses JSON too)
            assert answer.status_code == 413, answer.text
            problem = answer.json()
            assert problem["field"] == "body" and problem["detail"].endswith(f"takes more than {most}"), problem
            assert parsed == 0
            padded = '{"customer_id": 1, "lines": []}'.ljust(most)  # whitespace, exactly the bound
            before = parses["n"]
            answer = client.post("/api/orders", content=padded, headers={"Content-Type": "application/json"})
            assert answer.status_code != 413 and parses["n"] == before + 1, answer.text  # the observer: parsed
    finally:
        get_database(app).close()


def test_the_largest_valid_order_pretty_printed_is_within_the_bound(database_url, store):
    """The bound is generous to what the spec allows: 100 lines of the largest numbers, each character
    of every member name escaped (`\u0070` for `p`), indented by 8 spaces, is not refused by its length."""
    lines = [{"product_id": 9223372036854775807, "quantity": 1000}] * 100
    text = json.dumps({"customer_id": 9223372036854775807, "lines": lines}, indent=8)
    for name in ("customer_id", "lines", "product_id", "quantity"):
        text = text.replace(f'"{name}"', '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"')
    assert len(text) <= 2 * most_bytes(order_schema()) + validation.WHITESPACE_BYTES, len(text)
    assert json.loads(text)["lines"][0]["product_id"] == 9223372036854775807  # the escapes are JSON
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            answer = client.post("/api/orders", content=text, headers={"Content-Type": "application/json"})
        assert answer.status_code in (404, 409, 422), answer.text  # past the size check: no such product
    finally:
        get_database(app).close()


def test_every_request_body_of_the_spec_is_bounded():
    """Each operation's body has a largest valid form (every string a maxLength, every array a maxItems,
    every object closed): a new body schema without one fails here, naming the operation."""
    spec = resolve_refs(checked_spec())
    unbounded = [
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
        for media in operation["requestBody"]["content"].values()
        if most_bytes(media["schema"]) is None
    ]
    assert not unbounded, f"give these bodies a bound (maxLength, maxItems, additionalProperties: false): {unbounded}"
