"""One identity per text in the database itself (schema 005, then 021 in Unicode 16.0): the same rule as
the API's (swagger_server/text.py), so that psql or a future endpoint cannot store a second spelling of
a name or a SKU. Two readers of one rule: the API's and the database's must agree on every string."""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import psycopg2
import pytest

from swagger_server import text
from tests.support.database import query

SCHEMA = Path(__file__).resolve().parents[2] / "swagger_server" / "db" / "schema" / "021_text_identity_unicode_16.sql"


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
        cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and text.refused_kind(chr(cp))
    }
    assert _class(ends) == {cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and text.is_space(chr(cp))}


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
    "\u3164\u3164",  # Hangul fillers: default-ignorable, a name that shows as blank
    "a\u034fb",
    "x\ufe0f",
    "SKU\U000e0100",
    "a\u180bb",
    "\u17b4x",
    "new \U0001fae9",  # assigned in Unicode 16.0
    "gap \U0001fae0\U000e0fff\ufdd0",  # noncharacter, unassigned
    "Ångström",
    "A\tB",
    "\u1680x",
]


def _random_samples(n: int = 400) -> list[str]:
    rng = random.Random(30)
    alphabet = [
        chr(cp)
        for cp in (0x41, 0x20, 0xE9, 0x301, 0x200B, 0x2028, 0xA0, 0x3000, 0x1100, 0x1161, 0x85, 0xFEFF)
        + (0x3164, 0xFE0F, 0x34F, 0x1FAE9, 0xFDD0, 0x0E0100)
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(n)]


def test_the_database_and_the_api_agree_on_every_sample(db):
    for value in SAMPLES + _random_samples():
        api_stores = text.canonical(value) == value and text.refusal(value) is None
        (database_stores,) = query(db, "SELECT text_is_canonical(%s)", (value,))[0]
        assert database_stores == api_stores, (value, database_stores, api_stores)


@pytest.mark.parametrize(
    "sku",
    [
        "SKU-T1 ",
        "SKU-T1\u200b",
        "\ufeffSKU-T1",
        unicodedata.normalize("NFD", "SKÜ-T1"),
        "\u202eSKU-T1",
        "SKU\u2028T1",
        "SKU-T1\u3164",
        "\u0405KU-T1",  # Cyrillic Ѕ: NFC, no invisible code point, and not ASCII
    ],
    ids=["trailing-space", "zwsp", "bom", "nfd", "rlo", "line-separator", "hangul-filler", "cyrillic"],
)
def test_psql_cannot_store_a_second_spelling(db, sku):
    with db.cursor() as cur:
        cur.execute("BEGIN")  # the fixture's connection is in autocommit: nothing here is kept
        cur.execute("SAVEPOINT s")
        with pytest.raises(psycopg2.errors.CheckViolation) as refused:
            cur.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, 'x', 1, 1)", (sku,))
        # One that passes the text rule is refused as not ASCII, by its own constraint.
        expected = "products_sku_ascii" if text.refusal(text.canonical(sku)) is None else "products_sku_canonical"
        assert refused.value.diag.constraint_name in (expected, "products_sku_ascii"), (
            refused.value.diag.constraint_name
        )
        cur.execute("ROLLBACK TO SAVEPOINT s")
        # The observer: the canonical spelling is stored.
        cur.execute("INSERT INTO products (sku, name, price_cents, stock) VALUES ('SKU-T1-ok', 'x', 1, 1)")
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
        "SELECT conname, convalidated FROM pg_constraint WHERE conname ~ '_(canonical|ascii|length)$' ORDER BY conname",
    )
    assert rows == [
        ("customers_email_canonical", True),
        ("customers_name_canonical", True),
        ("products_description_canonical", True),
        ("products_description_length", True),
        ("products_name_canonical", True),
        ("products_sku_ascii", True),
        ("products_sku_canonical", True),
    ]


def test_the_database_reads_every_code_point_as_the_api_does(db):
    """Every code point, alone and after a letter: what the API admits the database admits, and what
    the API's NFC changes the database's NFC check refuses. With PostgreSQL 18 both are Unicode 16.0;
    a newer server agrees by Unicode's normalisation stability policy, an older one is caught at
    start-up (tests/db/test_unicode_version.py)."""
    points = [chr(cp) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    values = points + ["a" + p for p in points]
    admitted = [v for v in values if text.canonical(v) == v and text.refusal(v) is None]
    changed = [v for v in values if text.canonical(v) != v]
    assert len(admitted) > 150_000 and len(changed) > 1_000  # the observer: both kinds are there
    refused = query(db, "SELECT v FROM unnest(%s::text[]) v WHERE NOT text_is_canonical(v)", (admitted,))
    assert refused == [], [f"U+{ord(v[-1]):04X}" for (v,) in refused[:20]]
    kept = query(db, "SELECT v FROM unnest(%s::text[]) v WHERE v IS NFC NORMALIZED", (changed,))
    assert kept == [], [f"U+{ord(v[-1]):04X}" for (v,) in kept[:20]]


def test_the_default_ignorables_are_unicodes_own():
    """text.py derives Default_Ignorable_Code_Point as UAX #44 does, from its Unicode 16.0 tables; the
    `regex` library ships the derived property itself. They agree on every code point assigned in 16.0
    (regex's tables may be newer: a code point assigned later is refused as unassigned here anyway)."""
    import regex
    import unicodedata2

    theirs = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    ours = {
        cp
        for cp in range(0x110000)
        if cp in text.DEFAULT_IGNORABLE or (unicodedata2.category(chr(cp)) == "Cf" and not _not_ignorable_format(cp))
    }
    differ = [
        f"U+{cp:04X}"
        for cp in range(0x110000)
        if not 0xD800 <= cp <= 0xDFFF
        and unicodedata2.category(chr(cp)) != "Cn"
        and (cp in ours) != bool(theirs.match(chr(cp)))
    ]
    assert len(ours) > 4000 and not differ, differ[:20]


def _not_ignorable_format(cp: int) -> bool:
    """The format characters UAX #44 takes out of Default_Ignorable_Code_Point (they must show)."""
    prepended = {
        0x0600,
        0x0601,
        0x0602,
        0x0603,
        0x0604,
        0x0605,
        0x06DD,
        0x070F,
        0x0890,
        0x0891,
        0x08E2,
        0x110BD,
        0x110CD,
    }
    return cp in prepended or 0xFFF9 <= cp <= 0xFFFB or 0x13430 <= cp <= 0x1343F


def test_free_text_is_the_same_rule_with_line_feeds_in_the_database_and_the_api(db):
    """A description (schema 023) may hold line feeds between its lines; the rest of the rule is every
    other column's. The database's check (text_is_canonical with each LF read as a space) and the
    API's (text.refusal, lines=True) agree on every code point between two lines, and on the edges."""
    points = [chr(cp) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    values = ["a\n" + p + "\nb" for p in points] + ["\na", "a\n", "a\n\nb", "", "a\r\nb", " a\nb", "a\n\u200bb"]
    api = {v: text.canonical(v, lines=True) == v and text.refusal(v, lines=True) is None for v in values}
    assert api["a\n\nb"] and api[""] and not api["\na"] and not api["a\n"] and not api["a\n\u200bb"]
    assert not api["a\r\nb"]  # not canonical: the API reads it as "a\nb" first
    assert text.canonical("a\r\nb\rc", lines=True) == "a\nb\nc" and text.refusal("a\nb") is not None
    rows = query(
        db,
        "SELECT v, text_is_canonical(replace(v, E'\\n', ' ')) FROM unnest(%s::text[]) v",
        ([v for v in values if text.canonical(v, lines=True) == v],),
    )
    differ = [repr(v[:8]) for v, ok in rows if ok != api[v]]
    assert len(rows) > 150_000 and differ == [], differ[:20]
    row = query(
        db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'products_description_canonical'"
    )
    assert row and "replace(description, '\n'::text, ' '::text)" in row[0][0], row
