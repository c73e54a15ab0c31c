"""The dashboard, health operations, CORS and the Swagger UI."""

from datetime import UTC
from pathlib import Path

import yaml

from tests.support.auth import AUTH


def test_dashboard_aggregates_the_range(client, store):
    response = client.get("/api/dashboard?from=2026-01-05&to=2026-01-06&top=2")
    assert response.status_code == 200
    body = response.json()
    assert body["totals"] == {"orders": 2, "revenue_cents": 3500, "customers": 1, "average_order_cents": 1750}
    assert body["revenue_per_day"] == [
        {"day": "2026-01-05", "orders": 1, "revenue_cents": 2500},
        {"day": "2026-01-06", "orders": 1, "revenue_cents": 1000},
    ]
    assert body["top_customers"] == [{"id": 1, "name": "Ada Lovelace", "orders": 2, "revenue_cents": 3500}]
    assert body["top_products"] == [
        {"id": 1, "name": "Keyboard", "units": 3, "revenue_cents": 3000},
        {"id": 2, "name": "Mouse", "units": 1, "revenue_cents": 500},
    ]


def test_dashboard_range_is_inclusive_and_empty_ranges_are_zero(client, store):
    one_day = client.get("/api/dashboard?from=2026-01-06&to=2026-01-06").json()
    assert one_day["totals"]["orders"] == 1
    empty = client.get("/api/dashboard?from=2025-01-01&to=2025-01-31").json()
    assert empty["totals"] == {"orders": 0, "revenue_cents": 0, "customers": 0, "average_order_cents": 0}
    assert empty["revenue_per_day"] == [] and empty["top_products"] == []


def test_dashboard_rejects_bad_ranges(client, store):
    reversed_range = client.get("/api/dashboard?from=2026-02-01&to=2026-01-01")
    assert reversed_range.status_code == 400
    assert reversed_range.json()["field"] == "from"
    assert client.get("/api/dashboard?from=yesterday").status_code == 400
    too_long = client.get("/api/dashboard?from=2000-01-01&to=2026-01-01")
    assert too_long.status_code == 400 and too_long.json()["field"] == "from"
    for bad in ("to=", "to=20260131", "from=2026-02-30", "to=0000-01-01"):
        answer = client.get(f"/api/dashboard?{bad}")
        assert answer.status_code == 400 and answer.json()["field"] in ("from", "to"), (bad, answer.text)


def test_health_needs_no_database_and_no_token(client, pool):
    before = pool.stats()["requests"]
    assert client.get("/api/health").json()["status"] == "ok"
    assert pool.stats()["requests"] == before


def test_db_health_reports_pool_statistics(client, anon, pool):
    assert anon.get("/api/health/db").status_code == 401
    response = client.get("/api/health/db", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["pool"]["max"] == 4 and body["pool"]["in_use"] == 0


def test_db_test_runs_a_query(client, anon, store):
    assert anon.get("/api/health/db/test").status_code == 401
    body = client.get("/api/health/db/test", headers=AUTH).json()
    assert body["result"] == 1
    assert body["application_name"].startswith("store-api:")


def test_cors_allows_configured_origin_only(client, store):
    preflight = client.options(
        "/api/orders",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    # Errors rendered by Connexion's middleware carry the header too (flask-cors could not do this).
    not_found = client.get("/api/customers/999", headers={"Origin": "http://localhost:3000"})
    assert not_found.status_code == 404
    assert not_found.headers["access-control-allow-origin"] == "http://localhost:3000"
    denied = client.options(
        "/api/orders", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in denied.headers


ORIGIN = {"Origin": "http://localhost:3000"}


def test_every_error_carries_cors_headers_for_an_allowed_origin(app, store):
    """A browser on an allowed origin can read every error, whoever rendered it: Connexion (401, 404
    of an unknown route, 405, validation 400), our handlers (404, 409, 422), the body limit (413,
    415). The 503s are covered where they are provoked (pool-exhausted, overloaded)."""
    order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    with app.test_client() as client:
        first = client.post("/api/orders", json=order, headers={**AUTH, "Idempotency-Key": "cors-1"})
        assert first.status_code == 201
        answers = {
            401: client.get("/api/customers/1", headers=ORIGIN),
            404: client.get("/api/nope", headers={**ORIGIN, **AUTH}),
            405: client.delete("/api/products", headers={**ORIGIN, **AUTH}),
            400: client.get("/api/customers?limit=0", headers={**ORIGIN, **AUTH}),
            409: client.post(
                "/api/customers", json={"name": "Dup", "email": "ada@example.com"}, headers={**ORIGIN, **AUTH}
            ),
            422: client.post(
                "/api/orders",
                json={**order, "lines": [{"product_id": 2, "quantity": 1}]},
                headers={**ORIGIN, **AUTH, "Idempotency-Key": "cors-1"},
            ),
            413: client.post(
                "/api/customers",
                content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                headers={**ORIGIN, **AUTH, "Content-Type": "application/json"},
            ),
            415: client.post("/api/customers", content=b"x", headers={**ORIGIN, **AUTH, "Content-Type": "text/plain"}),
        }
    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        assert response.headers.get("access-control-allow-origin") == "http://localhost:3000", status
        assert response.headers["content-type"].startswith("application/problem+json"), status


def test_swagger_ui_and_spec_are_served(client):
    assert client.get("/api/ui/").status_code == 200
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"] == "3.0.3"
    operations = [
        op for path in spec["paths"].values() for op in path.values() if isinstance(op, dict) and "operationId" in op
    ]
    with open(Path(__file__).resolve().parents[2] / "swagger" / "swagger.yaml", encoding="utf-8") as f:
        written = {
            op["operationId"]
            for item in yaml.safe_load(f)["paths"].values()
            for op in item.values()
            if isinstance(op, dict) and "operationId" in op
        }
    assert {op["operationId"] for op in operations} == written and len(operations) == len(written)
    for op in operations:
        assert op.get("summary") and op.get("description") and op.get("tags"), op["operationId"]


def test_unknown_path_is_a_problem(client):
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_one_version_from_pyproject_in_the_spec_and_health(client):
    import tomllib

    root = Path(__file__).resolve().parents[2]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert client.get("/api/health").json() == {"status": "ok", "version": version}
    assert client.get("/api/openapi.json").json()["info"]["version"] == version
    # The file the SDKs are generated from says the same.
    assert yaml.safe_load((root / "swagger" / "swagger.yaml").read_text())["info"]["version"] == version


def test_the_root_leads_to_the_ui(anon):
    answer = anon.get("/", follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == "/api/ui/"


def test_demo_data_spans_the_twelve_months_before_today(database_url, db):
    import os
    import subprocess
    import sys
    from datetime import datetime, timedelta

    from tests.support.database import query

    # The command line, in its own process (COPY cannot run under the pool's wait callback, which
    # this test process has installed).
    env = {**os.environ, "APP_CONFIG": str(Path(__file__).parents[1] / "empty.ini"), "DATABASE_URL": database_url}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "swagger_server",
            "db",
            "seed",
            "--customers",
            "50",
            "--products",
            "20",
            "--orders",
            "400",
            "--reset",
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first, last = query(db, "SELECT min(created_at), max(created_at) FROM orders")[0]
    assert today - timedelta(days=366) <= first and last < today
    assert last > today - timedelta(days=30)  # the default dashboard range has orders
    # Nothing was created after the first order that names it.
    assert query(
        db, "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.created_at > o.created_at"
    ) == [(0,)]
    assert query(
        db,
        "SELECT count(*) FROM order_lines l JOIN orders o ON o.id = l.order_id"
        " JOIN products p ON p.id = l.product_id WHERE p.created_at > o.created_at",
    ) == [(0,)]
    query(db, "TRUNCATE order_lines, orders, products, customers RESTART IDENTITY CASCADE")
