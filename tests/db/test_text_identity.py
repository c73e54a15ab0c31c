"""One identity per text in the database itself (schema 005_text_identity.sql): the same rule as the
API's (swagger_server/text.py), so that psql or a future endpoint cannot store a second spelling of a
name or a SKU. Two readers of one rule: the API's and the database's must agree on every string."""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import psycopg2
import pytest

from swagger_server import text
from tests.conftest import query

SCHEMA = Path(__file__).resolve().parents[2] / "swagger_server" / "db" / "schema" / "005_text_identity.sql"


def _class(pattern: str) -> set[int]:
    """The code points of a PostgreSQL bracket expression of \\u and \\U escapes and ranges."""
    points: set[int] = set()
    for low, high in re.findall(r"(\\[uU][0-9a-f]+)(?:-(\\[uU][0-9a-f]+))?", pattern):
        start = int(low[2:], 16)
        points.update(range(start, int(high[2:], 16) + 1 if high else start + 1))
    return points


def test_the_schemas_classes_are_the_apis_rule():
    sql = SCHEMA.read_text()
    refused, ends = re.findall(r"!~ '\^?\[([^\]]+)\]", sql)[:2]
    assert _class(refused) == {
        cp
        for cp in range(0x110000)
        if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) in text.REFUSED_CATEGORIES
    }
    assert _class(ends) == {cp for cp in range(0x110000) if chr(cp).isspace()}


SAMPLES = [
    "Ada Lovelace",
    "Zoë",
    unicodedata.normalize("NFD", "Zoë"),
    "Ada\u200b",
    "\ufeffSKU-1",
    "\u202eSKU",
    "SKU-1 ",
    " SKU-1",
    "A\u00a0",
    "A\u3000",
    "a\u2028b",
    "a\u2029b",
    "tag\U000e0041",
    "x\u0085y",
    "x\u00ady",
    "한국어",
    unicodedata.normalize("NFD", "한국어"),
    "emoji 👩‍💻",  # a zero-width joiner (U+200D, Cf): refused
    "Ångström",
    "A\tB",
    "\u1680x",
]


def _random_samples(n: int = 400) -> list[str]:
    rng = random.Random(30)
    alphabet = [chr(cp) for cp in (0x41, 0x20, 0xE9, 0x301, 0x200B, 0x2028, 0xA0, 0x3000, 0x1100, 0x1161, 0x85, 0xFEFF)]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(n)]


def test_the_database_and_the_api_agree_on_every_sample(db):
    for value in SAMPLES + _random_samples():
        api_stores = text.canonical(value) == value and text.refusal(value) is None
        (database_stores,) = query(db, "SELECT text_is_canonical(%s)", (value,))[0]
        assert database_stores == api_stores, (value, database_stores, api_stores)


@pytest.mark.parametrize(
    "sku",
    ["SKU-T1 ", "SKU-T1\u200b", "\ufeffSKU-T1", unicodedata.normalize("NFD", "SKÜ-T1"), "\u202eSKU-T1", "SKU\u2028T1"],
    ids=["trailing-space", "zwsp", "bom", "nfd", "rlo", "line-separator"],
)
def test_psql_cannot_store_a_second_spelling(db, sku):
    with db.cursor() as cur:
        cur.execute("BEGIN")  # the fixture's connection is in autocommit: nothing here is kept
        cur.execute("SAVEPOINT s")
        with pytest.raises(psycopg2.errors.CheckViolation) as refused:
            cur.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, 'x', 1, 1)", (sku,))
        assert refused.value.diag.constraint_name == "products_text_canonical"
        cur.execute("ROLLBACK TO SAVEPOINT s")
        # The observer: the canonical spelling is stored.
        cur.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES ('SKÜ-T1-ok', 'x', 1, 1)")
        cur.execute("ROLLBACK")


def test_a_customer_name_is_held_to_the_same_rule(db):
    with db.cursor() as cur:
        cur.execute("BEGIN")
        for name in ("\u200b", "Ada\u202eX", "Ada "):
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("INSERT INTO customers (name, email) VALUES (%s, 'rule@example.com')", (name,))
            cur.execute("ROLLBACK TO SAVEPOINT s")
        cur.execute("ROLLBACK")


def test_the_validation_files_leave_valid_constraints(db):
    rows = query(
        db,
        "SELECT conname, convalidated FROM pg_constraint WHERE conname IN"
        " ('customers_text_canonical', 'products_text_canonical') ORDER BY conname",
    )
    assert rows == [("customers_text_canonical", True), ("products_text_canonical", True)]
