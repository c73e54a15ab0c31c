"""Customers through HTTP (Connexion's test client, so the spec validates requests and responses)."""

from tests.support.auth import AUTH
from tests.support.database import query


def test_list_customers_pages_with_a_cursor(client, store):
    first = client.get("/api/customers?limit=2")
    assert first.status_code == 200
    body = first.json()
    assert [c["email"] for c in body["items"]] == ["ada@example.com", "alan@example.com"]
    assert body["next_cursor"] == 2
    second = client.get(f"/api/customers?limit=2&after={body['next_cursor']}").json()
    assert [c["id"] for c in second["items"]] == [3]
    assert second["next_cursor"] is None


def test_list_customers_searches_name_and_email(client, store):
    assert [c["id"] for c in client.get("/api/customers?q=HOPPER").json()["items"]] == [3]
    assert [c["id"] for c in client.get("/api/customers?q=alan@").json()["items"]] == [2]
    # LIKE wildcards in the search are literal, not patterns.
    assert client.get("/api/customers?q=ada%25").json()["items"] == []
    assert client.get("/api/customers?q=a_a").status_code == 400  # no three letters in a row


def test_a_search_the_index_cannot_serve_is_refused_naming_q(client, store):
    """A term without three ASCII letters or digits in a row has no trigram to look up: the index would
    hand back every row, so it is refused, by the spec's pattern or (after NFC) by the controller."""
    for term in ("ad", "%25%25%25", "@ex", "%C3%B8%C3%B8%C3%B8", "---", "ab%CC%81c"):
        response = client.get(f"/api/customers?q={term}")
        assert response.status_code == 400, term
        assert response.headers["content-type"] == "application/problem+json"
        assert "q" in response.json()["detail"], term
    # "abc" then a combining acute: three letters for the spec's pattern, "abć" once in NFC.
    response = client.get("/api/customers?q=abc%CC%81")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("'q' must hold three ASCII letters or digits")
    assert client.get("/api/customers?q=ada").status_code == 200


def test_list_customers_rejects_bad_limit_naming_it(client, store):
    response = client.get("/api/customers?limit=1000")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "limit" in response.json()["detail"]


def test_get_customer(client, store):
    response = client.get("/api/customers/1")
    assert response.status_code == 200
    assert response.json() == {
        "id": 1,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "created_at": "2026-01-01T00:00:00+00:00",
    }


def test_get_missing_customer_is_404_problem(client, store):
    response = client.get("/api/customers/999")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "customer 999 not found"


def test_a_non_numeric_id_is_a_400_naming_the_parameter(client, store):
    """The README's table: a malformed id is a 400 naming the parameter (not a 404: the route exists)."""
    for path in ("/api/customers/abc", "/api/products/abc", "/api/orders/1x", "/api/customers/%D9%A1"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 400, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["field"] in ("customer_id", "product_id", "order_id"), response.json()


def test_create_customer(client, store):
    response = client.post("/api/customers", json={"name": "Edsger Dijkstra", "email": "ewd@example.com"}, headers=AUTH)
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"/api/customers/{created['id']}"
    assert query(store, "SELECT name, email FROM customers WHERE id = %s", (created["id"],)) == [
        ("Edsger Dijkstra", "ewd@example.com")
    ]


def test_create_customer_needs_a_token(client, anon, store):
    response = anon.post("/api/customers", json={"name": "X", "email": "x@example.com"})
    assert response.status_code == 401
    bad = anon.post(
        "/api/customers", json={"name": "X", "email": "x@example.com"}, headers={"Authorization": "Bearer wrong"}
    )
    assert bad.status_code == 401
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]


def test_create_customer_duplicate_email_is_409_and_writes_nothing(client, store):
    response = client.post("/api/customers", json={"name": "Ada 2", "email": "ADA@example.com"}, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["field"] == "email"
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]


def test_create_customer_validation_names_the_field(client, store):
    missing = client.post("/api/customers", json={"name": "X"}, headers=AUTH)
    assert missing.status_code == 400
    assert "email" in missing.json()["detail"]
    extra = client.post("/api/customers", json={"name": "X", "email": "x@example.com", "admin": True}, headers=AUTH)
    assert extra.status_code == 400
    assert "admin" in extra.json()["detail"]
    bad_email = client.post("/api/customers", json={"name": "X", "email": "not-an-email"}, headers=AUTH)
    assert bad_email.status_code == 400


def test_update_customer(client, store):
    response = client.patch("/api/customers/2", json={"name": "Alan M. Turing"}, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["name"] == "Alan M. Turing"
    assert response.json()["email"] == "alan@example.com"
    assert query(store, "SELECT name FROM customers WHERE id = 2") == [("Alan M. Turing",)]


def test_update_customer_errors(client, anon, store):
    assert client.patch("/api/customers/99", json={"name": "X"}, headers=AUTH).status_code == 404
    assert client.patch("/api/customers/2", json={"email": "ada@example.com"}, headers=AUTH).status_code == 409
    assert client.patch("/api/customers/2", json={}, headers=AUTH).status_code == 400
    assert anon.patch("/api/customers/2", json={"name": "X"}).status_code == 401
    assert query(store, "SELECT name, email FROM customers WHERE id = 2") == [("Alan Turing", "alan@example.com")]


def test_delete_customer(client, store):
    response = client.delete("/api/customers/3", headers=AUTH)
    assert response.status_code == 204
    assert response.content == b""
    assert query(store, "SELECT count(*) FROM customers WHERE id = 3") == [(0,)]
    assert client.delete("/api/customers/3", headers=AUTH).status_code == 404


def test_delete_customer_with_orders_is_409(client, store):
    response = client.delete("/api/customers/1", headers=AUTH)
    assert response.status_code == 409
    assert query(store, "SELECT count(*) FROM customers WHERE id = 1") == [(1,)]


def test_list_customer_orders(client, store):
    response = client.get("/api/customers/1/orders?limit=1")
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] == 1
    assert body["items"][0]["lines"] == [
        {"product_id": 1, "quantity": 2, "unit_price_cents": 1000},
        {"product_id": 2, "quantity": 1, "unit_price_cents": 500},
    ]
    assert client.get("/api/customers/2/orders").json() == {"items": [], "next_cursor": None}
    assert client.get("/api/customers/99/orders").status_code == 404
