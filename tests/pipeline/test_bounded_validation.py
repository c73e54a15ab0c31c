"""The work a body may cost before it is refused is bounded by what the spec allows, not by what was
sent (issue 42, class 1): an array, object or string over its schema's size is refused by its size,
measured before jsonschema or anything else walks the body; only as many items as the schema allows
are ever descended into. 100 000 lines where 100 are allowed took jsonschema 4 s of the event loop;
now the refusal is the JSON parse and a length check (`/tmp`-style measurement in the closing note)."""

from __future__ import annotations

import json

import pytest

from swagger_server import create_app, get_database, validation
from tests.conftest import AUTH, make_settings


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
            {"customer_id": 1, "lines": [{"product_id": "x"}] * 40_000},
            "lines",
            "'lines' has 40000 items; at most 100",
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
            assert walks["n"] == 0  # refused by its size: jsonschema never walked the 40 000 items
        else:
            assert walks["n"] >= 1  # the observer: within its sizes, jsonschema validates it
    finally:
        get_database(app).close()


def test_a_string_over_its_max_length_is_refused_by_its_length(database_url, store, walks):
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            answer = client.post("/api/customers", json={"name": "n" * 100_000, "email": "a@example.com"})
        assert answer.status_code == 400 and answer.json()["field"] == "name", answer.text
        assert answer.json()["detail"] == "'name' is 100000 characters long; at most 200 are allowed"
        assert walks["n"] == 0
    finally:
        get_database(app).close()
