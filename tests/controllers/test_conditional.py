"""Conditional requests (issue 22): ETags from row versions, If-None-Match -> 304, If-Match -> 412,
require_if_match -> 428. Every API test runs direct and through PgBouncer (transaction mode); the
racing writers run over real gunicorn (tests/controllers/test_races.py), the stale replica in tests/db/test_replica.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from swagger_server import create_app, get_database
from tests.support.auth import AUTH, TOKEN
from tests.support.database import make_settings, query
from tests.support.servers import Gunicorn


def test_a_product_has_a_strong_etag_that_changes_with_every_change_of_its_row(client, store):
    first = client.get("/api/products/1")
    assert first.headers["ETag"] == '"1"'
    patched = client.patch("/api/products/1", json={"price_cents": 1100})
    assert patched.headers["ETag"] == '"2"'
    assert client.get("/api/products/1").headers["ETag"] == '"2"'
    # Stock taken by an order changes the row, and so its ETag.
    assert (
        client.post("/api/orders", json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}).status_code
        == 201
    )
    assert client.get("/api/products/1").headers["ETag"] == '"3"'
    # And a change made outside the API (a manual fix) too: the version is the database's.
    query(store, "UPDATE products SET name = 'Fixed' WHERE id = 1")
    assert client.get("/api/products/1").headers["ETag"] == '"4"'


@pytest.mark.parametrize(
    "path, create",
    [
        ("/api/customers", {"name": "Tag", "email": "tag@example.com"}),
        ("/api/products", {"sku": "TAG-1", "name": "Tag", "price_cents": 1, "stock": 1}),
        ("/api/orders", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}),
    ],
)
def test_created_resources_carry_the_etag_their_get_has(client, store, path, create):
    created = client.post(path, json=create)
    assert created.status_code == 201
    assert created.headers["ETag"] == '"1"'
    assert client.get(created.headers["Location"]).headers["ETag"] == created.headers["ETag"]


@pytest.mark.parametrize("path", ["/api/customers/1", "/api/products/1", "/api/orders/1"])
def test_if_none_match_that_matches_is_304_with_the_etag_and_no_body(client, store, path):
    for condition in ('"1"', 'W/"1"', '"9", "1"', "*", ' "7" ,W/"1" '):
        answer = client.get(path, headers={"If-None-Match": condition})
        assert answer.status_code == 304, condition
        assert answer.headers["ETag"] == '"1"'
        assert answer.content == b""


@pytest.mark.parametrize("path", ["/api/customers/1", "/api/products/1", "/api/orders/1"])
def test_if_none_match_with_another_version_is_the_full_answer(client, store, path):
    answer = client.get(path, headers={"If-None-Match": '"2", "17"'})
    assert answer.status_code == 200 and answer.json()["id"] == 1
    assert answer.headers["ETag"] == '"1"'


def test_a_malformed_condition_is_a_400_naming_the_header(client, store):
    for value in ("1", '"unterminated', "W/1", '"a" "b"', ",", '"a",', 'w/"1"'):
        for method, header in (("GET", "If-None-Match"), ("PATCH", "If-Match")):
            answer = client.request(method, "/api/products/1", headers={header: value}, json={"stock": 1})
            assert answer.status_code == 400, (header, value, answer.text)
            assert answer.json()["field"] == header
    assert query(store, "SELECT stock, version FROM products WHERE id = 1") == [(10, 1)]


def test_a_patch_with_a_stale_if_match_is_412_with_the_current_etag_and_writes_nothing(client, store):
    etag = client.get("/api/products/1").headers["ETag"]
    assert client.patch("/api/products/1", json={"price_cents": 1500}, headers={"If-Match": etag}).status_code == 200
    stale = client.patch("/api/products/1", json={"price_cents": 900}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["ETag"] == '"2"'
    assert stale.json()["type"] == "/api/problems/precondition-failed" and stale.json()["field"] == "If-Match"
    assert query(store, "SELECT price_cents, version FROM products WHERE id = 1") == [(1500, 2)]


def test_if_match_uses_the_strong_comparison(client, store):
    cases = [('W/"1"', 412), ('"2"', 412), ('"x"', 412), ('"1"', 200), ('"7", "2"', 200), ("*", 200)]
    for version, (condition, status) in enumerate(cases, start=1):
        answer = client.patch("/api/customers/2", json={"name": f"Alan {version}"}, headers={"If-Match": condition})
        assert answer.status_code == status, (condition, answer.text)
        current = query(store, "SELECT version FROM customers WHERE id = 2")[0][0]
        assert answer.status_code == 412 or answer.headers["ETag"] == f'"{current}"'
    assert query(store, "SELECT version FROM customers WHERE id = 2") == [(4,)]  # three written


def test_a_delete_with_a_stale_if_match_is_412_and_the_customer_stays(client, store):
    created = client.post("/api/customers", json={"name": "Del", "email": "del@example.com"})
    location, etag = created.headers["Location"], created.headers["ETag"]
    assert client.patch(location, json={"name": "Changed"}).status_code == 200
    assert client.delete(location, headers={"If-Match": etag}).status_code == 412
    assert client.get(location).status_code == 200
    assert client.delete(location, headers={"If-Match": client.get(location).headers["ETag"]}).status_code == 204
    assert client.get(location).status_code == 404


def test_a_condition_on_a_missing_resource_is_404_not_412(client, store):
    """RFC 9110 §13.2.1: preconditions are ignored when the answer without them would not be 2xx."""
    assert client.patch("/api/products/999", json={"stock": 1}, headers={"If-Match": '"1"'}).status_code == 404
    assert client.delete("/api/customers/999", headers={"If-Match": "*"}).status_code == 404
    assert client.get("/api/products/999", headers={"If-None-Match": "*"}).status_code == 404


def test_require_if_match_makes_changes_without_it_428(database_url, store):
    app = create_app(make_settings(database_url, api={"require_if_match": True}))
    try:
        with app.test_client(headers=AUTH) as client:
            refused = client.patch("/api/products/1", json={"stock": 3})
            assert refused.status_code == 428 and refused.json()["field"] == "If-Match"
            assert client.delete("/api/customers/3").status_code == 428
            assert query(store, "SELECT stock FROM products WHERE id = 1") == [(10,)]
            assert client.get("/api/customers/3").status_code == 200
            etag = client.get("/api/products/1").headers["ETag"]
            assert client.patch("/api/products/1", json={"stock": 3}, headers={"If-Match": etag}).status_code == 200
            assert client.post("/api/customers", json={"name": "New", "email": "n@example.com"}).status_code == 201
    finally:
        get_database(app).close(timeout=2)


@pytest.mark.parametrize("path", ["/api/products?limit=2", "/api/customers?limit=2", "/api/customers/1/orders"])
def test_a_page_has_a_weak_etag_that_changes_when_an_item_on_it_does(client, store, path):
    first = client.get(path)
    tag = first.headers["ETag"]
    assert tag.startswith('W/"')
    again = client.get(path, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["ETag"] == tag and again.content == b""
    assert client.get(path, headers={"If-None-Match": tag[2:]}).status_code == 304  # weak comparison
    # A change to an item on the page (its version) makes a new page.
    table = "orders" if "orders" in path else path.split("/")[2].split("?")[0]
    query(store, f"UPDATE {table} SET created_at = created_at WHERE id = 1")
    changed = client.get(path, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["ETag"] != tag


def test_the_readmes_curl_example_works_as_typed(database_url, store, tmp_path):
    """The README's example, run by bash against real gunicorn as typed, with PORT this server's
    (as `make run` reads it), and the demo token file where `make run` writes it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("B=http://localhost:${PORT:-8080}")
    script = readme[start : readme.index("\n```", start)]
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "demo-token").write_text(TOKEN)
    live = Gunicorn(database_url)
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={**os.environ, "PORT": str(live.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        live.stop()
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines == ["HTTP/1.1 304 Not Modified", "HTTP/1.1 200 OK", "HTTP/1.1 412 Precondition Failed"], result
    assert query(store, "SELECT price_cents FROM products WHERE id = 3") == [(1999,)]
