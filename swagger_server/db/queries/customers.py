"""SQL for customers. Every function takes the connection first and never commits."""

from __future__ import annotations

import re

from swagger_server.db.queries import ANY, WriteCondition, like_escape, trigrams

# The search is served by trigram indexes (schema 008, 014-016; see _search): a term is found through its trigrams,
# runs of three letters or digits (pg_trgm's word characters; in a database with the C ctype, ASCII
# ones only). A term with no such run has no trigram to look up: the index would hand back every row,
# so the term is refused instead (400) rather than read the whole table.
SEARCH_RULE = "'q' must hold three ASCII letters or digits in a row (the search index finds terms by them)"
_TRIGRAM = re.compile(r"[A-Za-z0-9]{3}")


def searchable(term: str) -> bool:
    """Whether the search index can find `term` (SEARCH_RULE)."""
    return _TRIGRAM.search(term) is not None


def get_customer(conn, customer_id: int) -> dict | None:
    with conn.cursor() as cur:
        cur.execute("SELECT id, name, email, created_at, version FROM customers WHERE id = %s", (customer_id,))
        return cur.one()


def lock_customer(conn, customer_id: int) -> bool:
    """Whether the customer exists, holding a key-share lock on it to the end of the transaction: a
    concurrent DELETE waits, then fails on the orders that reference it, instead of slipping between."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM customers WHERE id = %s FOR KEY SHARE", (customer_id,))
        return cur.fetchone() is not None


def list_customers(conn, limit: int, after: int | None = None, search: str | None = None) -> list[dict]:
    """Up to `limit` customers with id > `after`, by id; `search` matches name or email, case-insensitive.
    A search should be `searchable`: one that is not reads every customer."""
    if search is not None:
        return _search(conn, limit, after or 0, search)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, name, email, created_at, version FROM customers WHERE id > %s ORDER BY id LIMIT %s",
            (after or 0, limit),
        )
        return cur.all()


# How a search finds its rows, whatever the planner's statistics say (they cannot tell a rare term
# from a common one: a term that happens to match one of ANALYZE's histogram entries was estimated at
# 1 % of the table and read the whole of it in id order, 455 ms at a million customers):
#
# 1. The probe: the next SEARCH_FIRST ids after `after`, in id order, filtered. A frequent term (one
#    row in 50 for a page of 20) is answered here. If it found some but not a page, the term is
#    middling: the probe goes on to SEARCH_PROBE ids (one row in 500 answers there; a term of one
#    name in 400 costs 4 ms this way, 24 ms by the indexes at a million). If it found none, the term
#    is rare and goes to the indexes at once: a rare term pays 1 000 rows, not 10 000 (0.5 ms; the
#    whole probe cut a small store's search throughput by five). Its match expressions are wrapped
#    (COALESCE over NOT NULL columns) so that no trigram index can serve them: the probe is always
#    this bounded range scan, its cost the same at any size.
# 2. Only if the probe found fewer than `limit`: the trigram indexes, for ids past what it read, sorted
#    (`id + 0`, so the primary key's order cannot be used to walk the rest of the table, and
#    enable_seqscan off, so neither can a sequential scan): a bitmap of the candidates the indexes
#    give, rechecked against the term.
#
# The email is indexed in two halves (schema 014-016), because a whole-address index made every
# address search intersect the domain's trigrams, which every row shares ("example.com": 64 ms at a
# million for one full address): the local part (before the first @) and the domain (after it). A
# term matches an email only within a half, or, holding an @, as "the local part ends with what comes
# before the term's first @" (by trigrams, or by a btree on the reversed local part when that is
# shorter than a trigram) and "the domain starts with the rest", or inside the domain. Those index
# conditions are implied by the match itself (tests/db/test_search.py checks them against a plain
# scan), and the exact condition is applied on top.
SEARCH_FIRST = 1_000
_MAX_ID = 2**63 - 1
SEARCH_PROBE = 10_000
_LOCAL = "split_part(email, '@', 1)"
_DOMAIN = "substr(email, strpos(email, '@') + 1)"


def _contains(part: str, expression: str, term: str, frequencies: dict, args: dict) -> str:
    """`expression` holds `term`, as the condition its trigram index should be asked: the few substrings
    of the term trigrams.substrings picks from `part`'s frequencies, else the whole term."""
    chosen = trigrams.substrings(term, frequencies[part]) if part in frequencies else None
    if chosen is None:
        return f"{expression} ILIKE %(pattern)s"
    names = []
    for i, substring in enumerate(chosen):
        args[f"{part}{i}"] = "%" + like_escape(substring) + "%"
        names.append(f"{expression} ILIKE %({part}{i})s")
    return "(" + " AND ".join(names) + ")"


def _candidates(conn, term: str) -> tuple[str, dict]:
    """The index conditions a customer matching `term` must meet (see above), and their parameters."""
    args = {"pattern": "%" + like_escape(term) + "%"}
    frequencies = trigrams.STATS.get(conn)
    conditions = [
        _contains("name", "name", term, frequencies, args),
        _contains("domain", _DOMAIN, term, frequencies, args),
    ]
    if "@" not in term:
        conditions.append(_contains("local", _LOCAL, term, frequencies, args))
    else:
        local, rest = term.split("@", 1)
        if searchable(local):
            args["local"] = "%" + like_escape(local)
            conditions.append(f"{_LOCAL} ILIKE %(local)s")
        elif local:
            # Lowered and reversed by PostgreSQL (as ILIKE lowers), then escaped for LIKE: a constant the
            # planner folds into the btree's range.
            args["local"] = local
            conditions.append(
                f"reverse(lower({_LOCAL})) LIKE replace(replace(replace(reverse(lower(%(local)s)),"
                " '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'"
            )
        else:
            args["domain"] = like_escape(rest) + "%"
            conditions.append(f"{_DOMAIN} ILIKE %(domain)s")
    return "(" + " OR ".join(conditions) + ")", args


def _search(conn, limit: int, after: int, term: str) -> list[dict]:
    candidates, args = _candidates(conn, term)
    probe = "(COALESCE(name, '') ILIKE %(pattern)s OR COALESCE(email, '') ILIKE %(pattern)s)"
    with conn.cursor() as cur:
        cur.execute(
            "SET LOCAL enable_seqscan = off;\n"
            "SET LOCAL max_parallel_workers_per_gather = 0;\n"
            "WITH first AS MATERIALIZED (\n"
            "  SELECT id, name, email, created_at, version FROM customers\n"
            f"  WHERE id > %(after)s AND id <= %(first_end)s AND {probe}\n"
            "  ORDER BY id LIMIT %(limit)s\n"
            "), more AS MATERIALIZED (\n"
            "  SELECT id, name, email, created_at, version FROM customers\n"
            "  WHERE (SELECT count(*) FROM first) BETWEEN 1 AND %(limit)s - 1\n"
            f"    AND id > %(first_end)s AND id <= %(probe_end)s AND {probe}\n"
            "  ORDER BY id LIMIT %(limit)s\n"
            "), probed AS (\n"
            "  SELECT * FROM first UNION ALL SELECT * FROM more\n"
            ")\n"
            "SELECT * FROM probed\n"
            "UNION ALL\n"
            "(SELECT id, name, email, created_at, version FROM customers\n"
            "  WHERE (SELECT count(*) FROM probed) < %(limit)s\n"
            "    AND id + 0 > CASE WHEN (SELECT count(*) FROM first) = 0 THEN %(first_end)s ELSE %(probe_end)s END\n"
            f"    AND {candidates}\n"
            "    AND (name ILIKE %(pattern)s OR email ILIKE %(pattern)s)\n"
            "  ORDER BY id + 0 LIMIT %(limit)s)\n"
            "ORDER BY id LIMIT %(limit)s",
            {
                **args,
                "after": after,
                # Ends of the probe, in Python: `after` may be near the largest id (bigint), past which
                # the sum would not fit.
                "first_end": min(after + SEARCH_FIRST, _MAX_ID),
                "probe_end": min(after + SEARCH_PROBE, _MAX_ID),
                "limit": limit,
            },
        )
        return cur.all()


def create_customer(conn, name: str, email: str) -> dict:
    """Insert a customer. Raises psycopg2.errors.UniqueViolation if the email is taken."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO customers (name, email) VALUES (%s, %s) RETURNING id, name, email, created_at, version",
            (name, email),
        )
        return cur.one()


def update_customer(
    conn, customer_id: int, name: str | None, email: str | None, condition: WriteCondition = ANY
) -> dict | None:
    """Change the given fields; None if no such customer, or if its version is not one `condition` (If-Match,
    If-None-Match) allows, checked in the same statement. Raises UniqueViolation if the email is taken."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE customers SET name = COALESCE(%s, name), email = COALESCE(%s, email)"
            " WHERE id = %s AND (%s::bigint[] IS NULL OR version = ANY(%s)) AND NOT version = ANY(%s::bigint[])"
            " RETURNING id, name, email, created_at, version",
            (name, email, customer_id, condition.allowed, condition.allowed, list(condition.refused)),
        )
        return cur.one()


def delete_customer(conn, customer_id: int, condition: WriteCondition = ANY) -> bool:
    """Delete; False if no such customer, or if its version is not one `condition` allows.
    Raises ForeignKeyViolation if the customer has orders."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM customers WHERE id = %s AND (%s::bigint[] IS NULL OR version = ANY(%s))"
            " AND NOT version = ANY(%s::bigint[])",
            (customer_id, condition.allowed, condition.allowed, list(condition.refused)),
        )
        return cur.rowcount == 1


def customer_version(conn, customer_id: int) -> int | None:
    """The customer's version, None if there is no such customer."""
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM customers WHERE id = %s", (customer_id,))
        row = cur.fetchone()
        return None if row is None else row[0]
