"""An operation marked `deprecated: true` in the spec answers with RFC 9745's Deprecation, RFC 8594's
Sunset and a Link to its notes, on every answer (errors too); other operations carry none; a
malformed date stops start-up naming the operation."""

from __future__ import annotations

import copy
import datetime as dt
from email.utils import parsedate_to_datetime

import pytest

from swagger_server import app as app_module
from swagger_server import create_app, get_database
from swagger_server.app import SpecError, load_spec
from tests.support.auth import AUTH
from tests.support.database import make_settings


def spec_with(**marks) -> dict:
    spec = copy.deepcopy(load_spec())
    spec["paths"]["/customers/{customer_id}"]["get"].update(marks)
    return spec


@pytest.fixture
def deprecated_app(monkeypatch, database_url):
    marks = {
        "deprecated": True,
        "x-deprecated-at": "2026-12-01",
        "x-sunset": "2027-06-01",
        "x-deprecation-notes": "https://example.com/store-api/UPGRADING.md#get-customer",
    }
    spec = spec_with(**marks)
    monkeypatch.setattr(app_module, "checked_spec", lambda: spec)
    app = create_app(make_settings(database_url))
    yield app
    get_database(app).close(timeout=2)


def test_a_deprecated_operation_says_when_and_where_on_every_answer(deprecated_app, store):
    client = deprecated_app.test_client(headers=AUTH)
    for path, status in (("/api/customers/1", 200), ("/api/customers/999", 404), ("/api/customers/x", 400)):
        response = client.get(path, headers={"Origin": "http://localhost:3000"})
        assert response.status_code == status, response.text
        assert response.headers["Deprecation"] == f"@{int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())}"
        assert parsedate_to_datetime(response.headers["Sunset"]) == dt.datetime(2027, 6, 1, tzinfo=dt.UTC)
        assert response.headers["Sunset"] == "Tue, 01 Jun 2027 00:00:00 GMT"
        assert (
            response.headers["Link"]
            == '<https://example.com/store-api/UPGRADING.md#get-customer>; rel="deprecation"; type="text/html"'
        )
        exposed = response.headers["Access-Control-Expose-Headers"].lower()
        assert all(h in exposed for h in ("deprecation", "sunset", "link")), exposed  # a browser may read them
    other = client.get("/api/customers")
    assert other.status_code == 200 and not {"deprecation", "sunset", "link"} & {k.lower() for k in other.headers}


def test_the_shipped_spec_deprecates_nothing_yet(database_url):
    app = create_app(make_settings(database_url))
    try:
        response = app.test_client(headers=AUTH).get("/api/products/1")
        assert "deprecation" not in {k.lower() for k in response.headers}
    finally:
        get_database(app).close(timeout=2)


@pytest.mark.parametrize(
    "marks", [{"deprecated": True}, {"deprecated": True, "x-deprecated-at": "2026-12-01", "x-sunset": "soon"}]
)
def test_a_deprecation_without_a_date_stops_start_up_naming_the_operation(monkeypatch, marks):
    spec = spec_with(**marks)
    monkeypatch.setattr(app_module, "load_spec", lambda: spec)
    with pytest.raises(SpecError, match="get_customer: x-"):
        app_module.checked_spec.__wrapped__()
