"""Orders through HTTP: one transaction, stock checked and decremented, nothing half-written."""

from tests.support.auth import AUTH
from tests.support.database import query


def order(client, lines, customer_id=1, headers=None):
    return client.post(
        "/api/orders", json={"customer_id": customer_id, "lines": lines}, headers={**AUTH, **(headers or {})}
    )


def test_place_order_decrements_stock(client, store):
    response = order(client, [{"product_id": 1, "quantity": 3}, {"product_id": 2, "quantity": 1}])
    assert response.status_code == 201
    body = response.json()
    assert body["total_cents"] == 3 * 1000 + 500
    assert body["lines"] == [
        {"product_id": 1, "quantity": 3, "unit_price_cents": 1000},
        {"product_id": 2, "quantity": 1, "unit_price_cents": 500},
    ]
    assert response.headers["location"] == f"/api/orders/{body['id']}"
    assert query(store, "SELECT id, stock FROM products ORDER BY id") == [(1, 7), (2, 4), (3, 0)]


def test_the_created_order_is_what_a_read_of_it_returns(client, store):
    """The 201 is built from the insert's own RETURNING (no read-back round trip): its body and ETag are
    byte for byte what GET /api/orders/{id} then answers, lines in the same order, timestamp and all."""
    created = order(client, [{"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 2}])
    assert created.status_code == 201, created.text
    read = client.get(created.headers["location"], headers=AUTH)
    assert read.status_code == 200
    assert created.content == read.content
    assert created.headers["etag"] == read.headers["etag"]
    assert [line["product_id"] for line in created.json()["lines"]] == [1, 2]


def test_repeated_product_lines_are_merged(client, store):
    response = order(client, [{"product_id": 2, "quantity": 2}, {"product_id": 2, "quantity": 3}])
    assert response.status_code == 201
    assert response.json()["lines"] == [{"product_id": 2, "quantity": 5, "unit_price_cents": 500}]
    assert query(store, "SELECT stock FROM products WHERE id = 2") == [(0,)]


def test_short_stock_is_409_and_nothing_is_written(client, store):
    response = order(client, [{"product_id": 1, "quantity": 1}, {"product_id": 2, "quantity": 6}])
    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "/api/problems/insufficient-stock"
    assert (problem["product_id"], problem["requested"], problem["available"]) == (2, 6, 5)
    assert query(store, "SELECT id, stock FROM products ORDER BY id") == [(1, 10), (2, 5), (3, 0)]
    assert query(store, "SELECT count(*) FROM orders") == [(2,)]


def test_unknown_customer_or_product_is_404(client, store):
    assert order(client, [{"product_id": 1, "quantity": 1}], customer_id=99).status_code == 404
    missing = order(client, [{"product_id": 1, "quantity": 1}, {"product_id": 42, "quantity": 1}])
    assert missing.status_code == 404
    assert "42" in missing.json()["detail"]
    assert query(store, "SELECT stock FROM products WHERE id = 1") == [(10,)]


def test_order_validation(client, anon, store):
    assert order(client, []).status_code == 400
    assert order(client, [{"product_id": 1, "quantity": 0}]).status_code == 400
    assert (
        anon.post("/api/orders", json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}).status_code
        == 401
    )


def test_idempotency_key_replays_the_original_order(client, store):
    key = {"Idempotency-Key": "retry-me-1"}
    first = order(client, [{"product_id": 1, "quantity": 2}], headers=key)
    again = order(client, [{"product_id": 1, "quantity": 2}], headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert query(store, "SELECT stock FROM products WHERE id = 1") == [(8,)]
    assert query(store, "SELECT count(*) FROM idempotency_keys WHERE key = 'retry-me-1'") == [(1,)]


def test_idempotency_key_with_a_different_body_is_422(client, store):
    key = {"Idempotency-Key": "retry-me-2"}
    assert order(client, [{"product_id": 1, "quantity": 1}], headers=key).status_code == 201
    response = order(client, [{"product_id": 1, "quantity": 2}], headers=key)
    assert response.status_code == 422
    assert query(store, "SELECT stock FROM products WHERE id = 1") == [(9,)]


def test_get_order(client, store):
    response = client.get("/api/orders/1")
    assert response.status_code == 200
    assert response.json()["total_cents"] == 2500
    assert len(response.json()["lines"]) == 2
    assert client.get("/api/orders/99").status_code == 404
