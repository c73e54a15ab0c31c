"""SQL for customers. Every function takes the connection first and never commits."""

from __future__ import annotations

import re

from swagger_server.db.queries import ANY, WriteCondition, like_escape

# The search is served by trigram indexes (schema 008, 009): a term is found through its trigrams,
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
    pattern = None if search is None else "%" + like_escape(search) + "%"
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, name, email, created_at, version FROM customers"
            " WHERE id > %(after)s AND (%(pattern)s::text IS NULL OR name ILIKE %(pattern)s OR email ILIKE %(pattern)s)"
            " ORDER BY id LIMIT %(limit)s",
            {"after": after or 0, "pattern": pattern, "limit": limit},
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
