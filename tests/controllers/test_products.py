"""Products through HTTP."""

from tests.support.auth import AUTH
from tests.support.database import query


def test_list_products_and_in_stock_filter(client, store):
    assert [p["sku"] for p in client.get("/api/products").json()["items"]] == ["SKU-1", "SKU-2", "SKU-3"]
    assert [p["sku"] for p in client.get("/api/products?in_stock=true").json()["items"]] == ["SKU-1", "SKU-2"]
    assert [p["sku"] for p in client.get("/api/products?in_stock=false").json()["items"]] == ["SKU-3"]


def test_get_product(client, store):
    body = client.get("/api/products/2").json()
    assert (body["sku"], body["price_cents"], body["stock"]) == ("SKU-2", 500, 5)
    assert client.get("/api/products/99").status_code == 404


def test_create_product(client, store):
    response = client.post(
        "/api/products", json={"sku": "SKU-9", "name": "Lamp", "price_cents": 1999, "stock": 3}, headers=AUTH
    )
    assert response.status_code == 201
    assert query(store, "SELECT name, price_cents, stock FROM products WHERE sku = 'SKU-9'") == [("Lamp", 1999, 3)]


def test_create_product_errors(client, anon, store):
    dup = client.post("/api/products", json={"sku": "SKU-1", "name": "X", "price_cents": 1, "stock": 1}, headers=AUTH)
    assert dup.status_code == 409
    assert dup.json()["field"] == "sku"
    negative = client.post("/api/products", json={"sku": "S", "name": "X", "price_cents": 1, "stock": -1}, headers=AUTH)
    assert negative.status_code == 400
    assert "stock" in negative.json()["detail"]
    assert anon.post("/api/products", json={"sku": "S", "name": "X", "price_cents": 1, "stock": 1}).status_code == 401
    assert query(store, "SELECT count(*) FROM products") == [(3,)]


def test_update_product(client, store):
    response = client.patch("/api/products/3", json={"stock": 7, "price_cents": 300}, headers=AUTH)
    assert response.status_code == 200
    assert (response.json()["stock"], response.json()["price_cents"]) == (7, 300)
    assert query(store, "SELECT stock, price_cents, name FROM products WHERE id = 3") == [(7, 300, "Cable")]
    assert client.patch("/api/products/99", json={"stock": 1}, headers=AUTH).status_code == 404
    assert client.patch("/api/products/3", json={"stock": -5}, headers=AUTH).status_code == 400
