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


def test_a_description_is_free_text_with_line_breaks_and_the_rest_of_the_rule(client, store):
    """A product's description may run to paragraphs: line feeds between its lines (CR LF, as a
    browser's form sends it, is stored as LF); a tab, a zero-width space or a line break at either
    end is refused, 400 naming the field, and nothing is written."""
    new = {"sku": "SKU-9", "name": "Lamp", "price_cents": 1999, "stock": 3}
    made = client.post("/api/products", json={**new, "description": "Warm light.\r\n\r\nUSB-C, 1.5 m cable."})
    assert made.status_code == 201, made.json()
    assert made.json()["description"] == "Warm light.\n\nUSB-C, 1.5 m cable."
    stored = query(store, "SELECT description FROM products WHERE sku = 'SKU-9'")
    assert stored == [("Warm light.\n\nUSB-C, 1.5 m cable.",)]
    for bad in ("Warm\tlight.", "Warm\u200blight.", "\nWarm light.", "Warm light.\n", "x" * 2001):
        refused = client.post("/api/products", json={**new, "sku": "SKU-10", "description": bad})
        assert refused.status_code == 400 and refused.json()["field"] == "description", (bad[:20], refused.json())
    assert query(store, "SELECT count(*) FROM products WHERE sku = 'SKU-10'") == [(0,)]
    assert client.get("/api/products/1").json()["description"] == ""  # none: empty
    changed = client.patch(f"/api/products/{made.json()['id']}", json={"description": "One line."})
    assert changed.status_code == 200 and changed.json()["description"] == "One line."
    cleared = client.patch(f"/api/products/{made.json()['id']}", json={"description": ""})
    assert cleared.status_code == 200 and cleared.json()["description"] == ""
    # A name is not free text: a line break in it is refused.
    assert client.post("/api/products", json={**new, "sku": "SKU-11", "name": "Two\nlines"}).status_code == 400
