"""The customer search (db/queries/customers.py, _search) finds exactly what a plain scan finds.

The search takes three routes, a probe of the next ids in order (extended for a middling term), then
the trigram indexes with conditions derived from the term (the email's local part and domain, a
reversed local part): each derived condition must be implied by the match itself, or a customer goes
missing. Here random
customers, ids spread so that every route runs (a small probe), and random terms (often cut from an
existing name or email, in either case, with @, dots and LIKE's own characters) are searched page by
page, against the same match read by a sequential scan."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from swagger_server.db.connection import Connection
from swagger_server.db.queries import customers, trigrams
from tests.support.database import admin_connect, query, schema_database

ALPHABET = "abAB01.@_%\\-é"


@pytest.fixture(scope="module")
def search_url(pg_server):
    return schema_database(pg_server, "store_search")


@pytest.fixture(scope="module")
def conn(search_url):
    conn = Connection(search_url)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def admin(search_url):
    conn = admin_connect(search_url)
    yield conn
    conn.close()


def plain_scan(admin, term: str, after: int, limit: int) -> list[int]:
    with admin.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        cur.execute(
            "SELECT id FROM customers WHERE id > %(after)s AND (name ILIKE %(p)s OR email ILIKE %(p)s)"
            " ORDER BY id LIMIT %(limit)s",
            {"after": after, "p": "%" + customers.like_escape(term) + "%", "limit": limit},
        )
        ids = [r[0] for r in cur.fetchall()]
        cur.execute("COMMIT")
    return ids


texts = st.text(ALPHABET, min_size=1, max_size=12)
people = st.lists(
    st.tuples(st.integers(1, 400), texts, texts, st.sampled_from(["", "@", "@@"]), texts),
    min_size=1,
    max_size=40,
    unique_by=lambda p: p[0],
)


@st.composite
def cases(draw):
    rows = draw(people)
    rows = [(gap, name, local + at + domain) for gap, name, local, at, domain in rows]
    term = ""
    if draw(st.booleans()):  # cut from an existing name or email, so that it matches
        source = draw(st.sampled_from([text for _, name, email in rows for text in (name, email)]))
        start = draw(st.integers(0, len(source) - 1))
        term = source[start : draw(st.integers(start + 1, len(source)))]
        term = "".join(c.upper() if draw(st.booleans()) else c for c in term)
    if not customers.searchable(term):  # three letters or digits in a row, anywhere in it
        term = draw(st.text(ALPHABET, max_size=4)) + draw(st.text("abAB01", min_size=3, max_size=5)) + term
    return rows, term


shares = st.dictionaries(st.text("ab01 ", min_size=3, max_size=3), st.floats(0.0001, 1.0), max_size=40)
part_frequencies = st.builds(trigrams.Frequencies, shares, st.floats(0.0001, 0.1))
# The trigram statistics the index conditions are chosen from (trigrams.py): none, as before ANALYZE,
# or any shares at all: which substrings are chosen changes the speed, never the answer.
frequencies = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"name": part_frequencies, "local": part_frequencies, "domain": part_frequencies}),
)


@given(
    case=cases(),
    first=st.integers(1, 60),
    probe=st.integers(1, 60),
    limit=st.integers(1, 6),
    stats=frequencies,
)
@example(
    case=([(1, "x", "ab@example.com"), (90, "y", "zab@example.com")], "ab@example.co"),
    first=2,
    probe=5,
    limit=1,
    stats={},
)
@example(case=([(1, "x", "q@rst@abc.org"), (90, "y", "rst@abc.org")], "rst@abc"), first=2, probe=5, limit=2, stats={})
@example(
    case=([(1, "x", "a%bcd_e\\f@x.io"), (90, "y", "A%BCD_E\\F@X.IO")], "%bcd_e\\f@"),
    first=2,
    probe=5,
    limit=1,
    stats={},
)
@example(
    case=([(1, "x", "abc@cd@ef.org"), (90, "y", "zabc@cd@ef.org")], "abc@cd@ef"), first=2, probe=5, limit=2, stats={}
)
@example(
    case=([(1, "hopper", "a@b.c"), (4, "hopper", "d@e.f"), (1, "hopper", "g@h.i")], "hopper"),
    first=2,
    probe=5,
    limit=5,
    stats={},
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(
    case=([(5, "hopper", "a@b.c"), (1, "x", "d@e.f"), (4, "hopper", "g@h.i"), (1, "hopper", "j@k.l")], "hopper"),
    first=5,
    probe=10,
    limit=5,
    stats={},
)
@example(case=([(6, "hopper", "a@b.c"), (4, "hopper", "g@h.i")], "hopper"), first=5, probe=10, limit=5, stats={})
def test_the_search_finds_what_a_plain_scan_finds(conn, admin, monkeypatch, case, first, probe, limit, stats):
    rows, term = case
    monkeypatch.setattr(trigrams.STATS, "get", lambda conn: stats)
    assume(customers.searchable(term))  # any other is refused 400 by the API (test_customers)
    query(admin, "TRUNCATE customers RESTART IDENTITY CASCADE")
    ids, next_id = [], 0
    for gap, _, _ in rows:
        next_id += gap
        ids.append(next_id)
    query(
        admin,
        "INSERT INTO customers (id, name, email) SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[])"
        " ON CONFLICT DO NOTHING",
        (ids, [n for _, n, _ in rows], [e if len(e) >= 3 else e + "xyz" for _, _, e in rows]),
    )
    monkeypatch.setattr(customers, "SEARCH_FIRST", min(first, probe))
    monkeypatch.setattr(customers, "SEARCH_PROBE", probe)
    after, pages = 0, 0
    while True:
        found = [row["id"] for row in customers.list_customers(conn, limit, after, term)]
        assert found == plain_scan(admin, term, after, limit), (term, after)
        if len(found) < limit:
            break
        after, pages = found[-1], pages + 1
        assert pages < 100


def test_the_search_tries_both_routes(conn, admin, monkeypatch):
    """The property above can fail on any route: a match near the start is found by the probe, one
    far past it by the index, and the page puts them in id order."""
    query(admin, "TRUNCATE customers RESTART IDENTITY CASCADE")
    query(
        admin,
        "INSERT INTO customers (id, name, email) VALUES (3, 'Near', 'near.hopper@example.com'),"
        " (5000, 'Far', 'far@hopper.example.org'), (9000, 'Farther', 'x@example.com')",
    )
    monkeypatch.setattr(customers, "SEARCH_FIRST", 10)
    monkeypatch.setattr(customers, "SEARCH_PROBE", 100)
    assert [r["id"] for r in customers.list_customers(conn, 5, 0, "HOPPER")] == [3, 5000]
    assert [r["id"] for r in customers.list_customers(conn, 5, 3, "hopper")] == [5000]
    assert [r["id"] for r in customers.list_customers(conn, 5, 0, "x@exa")] == [9000]
    assert [r["id"] for r in customers.list_customers(conn, 1, 0, "example")] == [3]
    # A cursor near the largest id: the probe's ends stay within bigint (the contract fuzzer's find).
    assert customers.list_customers(conn, 5, 2**63 - 2, "hopper") == []


@given(st.text("abcAB019 .-@_%é", max_size=16))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_trigrams_are_the_ones_pg_trgm_reads(admin, text):
    """trigrams.like_trigrams follows pg_trgm's reading of a term: text bounded on both sides has
    every word padded on both, as show_trgm pads (ASCII words; a term that is not ASCII is given to
    the index whole)."""
    assume(text.isascii())
    assert trigrams.like_trigrams("." + text + ".") == set(query(admin, "SELECT show_trgm(%s)", (text,))[0][0])


def test_the_chosen_substrings_are_the_terms_rarest_apart():
    """Words' trigrams common (5 %), a digit's rarer (2 %): one substring per word, rarest and shortest
    first, until the estimate is small enough (0.02 * 0.05 * 0.05 of the rows), a trigram no statistic
    knows taken as rare; one word, by more than one substring of it, apart; a term that is not ASCII
    goes whole."""
    common = trigrams.Frequencies({t: 0.05 for t in trigrams.like_trigrams(".ada.turing.")} | {"  1": 0.02}, 0.001)
    assert trigrams.substrings("ada.turing.1", common) == ["ada", ".t", ".1"]
    assert trigrams.substrings("ada.turing.1xy", common) == [".t", "1xy"]
    assert trigrams.substrings("lovelace", trigrams.Frequencies({}, 0.01)) == ["lov", "ela"]
    assert trigrams.substrings("aé b", common) is None
    # What three or four substrings cannot narrow to ENOUGH goes whole: all its trigrams narrow most.
    assert trigrams.substrings("lovelace", trigrams.Frequencies({}, 0.5)) is None
