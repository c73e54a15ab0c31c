"""One Unicode version governs the text rule (swagger_server/text.py, db/unicode.py): the API's tables
(unicodedata2 16.0.0) against the database's (`unicode_version()`), compared at start-up and said in
the log; and where the database's is older, a text its NFC check refuses is answered 400 naming the
field, as the API's own refusals are, not 409 naming none."""

from __future__ import annotations

import logging

import pytest

from swagger_server import create_app, get_database
from swagger_server.db import unicode
from swagger_server.db.migrate import upgrade
from swagger_server.text import UNICODE_VERSION
from tests.support.auth import AUTH
from tests.support.database import admin_connect, make_settings, query


def test_the_rule_is_unicode_16_whatever_python_runs_it():
    import unicodedata

    assert UNICODE_VERSION == "16.0.0"
    assert unicodedata.unidata_version != UNICODE_VERSION  # the observer: Python's own tables differ (3.11: 14.0.0)


def test_start_up_says_the_database_speaks_the_same_version(database_url, store, caplog):
    caplog.set_level(logging.INFO, logger="swagger_server.db.unicode")
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            assert client.get("/api/customers/1").status_code == 200
        lines = [r.getMessage() for r in caplog.records if r.name == "swagger_server.db.unicode"]
        assert lines == ["text rule: Unicode 16.0.0; the database's is 16.0: one rule"], lines
        assert get_database(app).unicode == "16.0"
    finally:
        get_database(app).close()


@pytest.mark.parametrize(
    "theirs, level, says",
    [
        ("16.0", logging.INFO, "one rule"),
        ("17.0", logging.INFO, "one rule"),  # newer: NFC of assigned code points is stable
        ("15.1", logging.WARNING, "the database's is 15.1: text with a code point it does not know"),
        (None, logging.WARNING, "older than PostgreSQL 17 (it cannot say)"),
    ],
)
def test_the_verdict_for_each_kind_of_database(theirs, level, says):
    got_level, line = unicode.verdict(theirs, "16.0.0")
    assert got_level == level and says in line, line


def test_text_a_database_with_older_unicode_refuses_is_400_naming_the_field(new_database):
    """PostgreSQL 17 (Unicode 15.1) does not know U+1FAE9 (Unicode 16.0); the API admits it. Made here
    by a database whose rule refuses it as that one would: the write is 400 naming `name`, the row
    not written. The observer: with the shipped rule the same write is created."""
    url = new_database("store_unicode_gap")
    upgrade(url)
    name = "Tired \U0001fae9"
    app = create_app(make_settings(url))
    try:
        with app.test_client(headers=AUTH) as client:
            made = client.post("/api/customers", json={"name": name, "email": "first@example.com"})
            assert made.status_code == 201, made.text
            admin = admin_connect(url)
            try:
                query(
                    admin,
                    "CREATE OR REPLACE FUNCTION text_is_canonical(value text) RETURNS boolean LANGUAGE sql"
                    " IMMUTABLE AS $$ SELECT value !~ '[\\U0001fae9]' $$",
                )
                refused = client.post("/api/customers", json={"name": name, "email": "second@example.com"})
                assert refused.status_code == 400, refused.text
                assert refused.json()["field"] == "name" and "Unicode" in refused.json()["detail"], refused.json()
                assert query(admin, "SELECT count(*) FROM customers WHERE email = 'second@example.com'") == [(0,)]
            finally:
                admin.close()
    finally:
        get_database(app).close()
