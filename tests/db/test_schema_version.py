"""The code knows its schema (Database.check_schema): an empty database, or one behind this code, gets
readiness 503 and a 503 problem naming `db upgrade` on every API call, never a 500; a newer schema is
served; a `db upgrade` run later is noticed without a restart."""

from __future__ import annotations

import logging

import pytest

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.db.migrate import upgrade
from tests.support.auth import AUTH
from tests.support.database import admin_connect, make_settings, query, schema_dir


@pytest.fixture
def app_on(request):
    """app_on(url) -> a test client of an app on that database (closed after the test)."""
    apps = []

    def make(url: str):
        app = create_app(make_settings(url))
        apps.append(app)
        return app.test_client(headers=AUTH)

    yield make
    for app in apps:
        get_database(app).close(timeout=2)


def assert_schema_behind(response):
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["type"] == "/api/problems/schema-behind", body
    assert "db upgrade" in body["detail"], body
    assert "Traceback" not in response.text


CALLS = [
    ("GET", "/api/customers", None),
    ("GET", "/api/customers/1", None),
    ("GET", "/api/products", None),
    ("GET", "/api/orders/1", None),
    ("GET", "/api/dashboard", None),
    ("POST", "/api/customers", {"name": "Ada", "email": "ada@example.com"}),
    ("POST", "/api/orders", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}),
]


@pytest.mark.parametrize("state", ["empty", "behind"])
def test_a_database_without_this_codes_schema_is_a_503_naming_db_upgrade_never_a_500(
    new_database, tmp_path, app_on, caplog, state
):
    url = new_database(f"store_schema_{state}")
    if state == "behind":  # a release ago: the row versions (ETags) this code reads are not there yet
        upgrade(url, schema_dir=schema_dir(tmp_path, upto="002_idempotency_keys.sql"))
    client = app_on(url)
    caplog.set_level(logging.INFO)
    assert client.get("/api/health").status_code == 200  # alive: a restart would not help
    assert_schema_behind(client.get("/api/health/ready"))
    for method, path, body in CALLS:
        assert_schema_behind(client.request(method, path, json=body))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
    said = [r.getMessage() for r in caplog.records if "schema is behind" in r.getMessage()]
    assert len(said) == 1 and "003_row_versions.sql" in said[0], said  # once, naming the files
    # The operator runs `db upgrade`: the same process serves within a second or so, no restart.
    upgrade(url)
    wait_until(lambda: client.get("/api/health/ready").status_code == 200, timeout=5, message="ready")
    assert client.get("/api/customers").status_code == 200
    created = client.post("/api/customers", json={"name": "Ada", "email": "ada@example.com"})
    assert created.status_code == 201, created.text


def test_a_schema_newer_than_this_code_is_served(new_database, app_on):
    """Rolled back to this code after a newer release's `db upgrade` (expand/contract keeps it readable)."""
    url = new_database("store_schema_newer")
    upgrade(url)
    conn = admin_connect(url)
    try:
        query(conn, "ALTER TABLE customers ADD COLUMN loyalty_tier text")
        query(conn, "INSERT INTO schema_migrations (version) VALUES ('999_from_a_newer_release.sql')")
    finally:
        conn.close()
    client = app_on(url)
    assert client.get("/api/health/ready").status_code == 200
    created = client.post("/api/customers", json={"name": "Ada", "email": "ada@example.com"})
    assert created.status_code == 201, created.text
    assert "loyalty_tier" not in client.get(f"/api/customers/{created.json()['id']}").json()


def test_once_current_the_check_costs_no_query(database_url):
    app = create_app(make_settings(database_url))
    client = app.test_client(headers=AUTH)
    database = get_database(app)
    assert client.get("/api/products").status_code == 200
    assert database.schema_current
    checked = database._schema_checked
    for _ in range(5):
        assert client.get("/api/products").status_code == 200
        assert client.get("/api/health/ready").status_code == 200
    assert database._schema_checked == checked  # not asked again
    database.close(timeout=2)
