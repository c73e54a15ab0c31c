"""SQL for products. Every function takes the connection first and never commits."""

from __future__ import annotations

from swagger_server.db.queries import ANY, WriteCondition


def get_product(conn, product_id: int) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, sku, name, description, price_cents, stock, created_at, updated_at, version FROM products WHERE id = %s",
            (product_id,),
        )
        return cur.one()


def list_products(conn, limit: int, after: int | None = None, in_stock: bool | None = None) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, sku, name, description, price_cents, stock, created_at, updated_at, version FROM products WHERE id > %(after)s"
            " AND (%(in_stock)s::boolean IS NULL OR (stock > 0) = %(in_stock)s)"
            " ORDER BY id LIMIT %(limit)s",
            {"after": after or 0, "in_stock": in_stock, "limit": limit},
        )
        return cur.all()


def create_product(conn, sku: str, name: str, price_cents: int, stock: int, description: str = "") -> dict:
    """Insert a product. Raises psycopg2.errors.UniqueViolation if the SKU is taken."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO products (sku, name, price_cents, stock, description) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id, sku, name, description, price_cents, stock, created_at, updated_at, version",
            (sku, name, price_cents, stock, description),
        )
        return cur.one()


def update_product(conn, product_id: int, fields: dict, condition: WriteCondition = ANY) -> dict | None:
    """Change the given fields (name, description, price_cents, stock); None if no such product, or if its version is
    not one `condition` (If-Match, If-None-Match) allows: the check and the write are one statement, so
    no other write can come between them."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE products SET name = COALESCE(%(name)s, name), description = COALESCE(%(description)s, description),"
            " price_cents = COALESCE(%(price_cents)s, price_cents), stock = COALESCE(%(stock)s, stock),"
            " updated_at = now() WHERE id = %(id)s AND (%(versions)s::bigint[] IS NULL OR version = ANY(%(versions)s))"
            " AND NOT version = ANY(%(refused)s::bigint[])"
            " RETURNING id, sku, name, description, price_cents, stock, created_at, updated_at, version",
            {
                "name": fields.get("name"),
                "description": fields.get("description"),
                "price_cents": fields.get("price_cents"),
                "stock": fields.get("stock"),
                "id": product_id,
                "versions": condition.allowed,
                "refused": list(condition.refused),
            },
        )
        return cur.one()


def product_version(conn, product_id: int) -> int | None:
    """The product's version, None if there is no such product."""
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM products WHERE id = %s", (product_id,))
        row = cur.fetchone()
        return None if row is None else row[0]
