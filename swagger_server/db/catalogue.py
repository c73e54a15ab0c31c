"""The store's tables, read from PostgreSQL's catalogue rather than listed by hand: a table added by a
migration is emptied by `db seed --reset` and by the tests' `store` fixture without anyone
remembering to add it to a list (a list someone must extend is one someone forgets, and rows then
leak between test runs)."""

from __future__ import annotations

from psycopg2 import sql

BOOKKEEPING = ("schema_migrations",)  # the migrator's record (db/migrate.py): never the store's data


def store_tables(conn) -> list[str]:
    """Every ordinary or partitioned table of the public schema but the migrator's, by name."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind IN ('r', 'p') AND NOT relispartition AND relname <> ALL(%s) ORDER BY relname",
            (list(BOOKKEEPING),),
        )
        return [name for (name,) in cur.fetchall()]


def truncate_store(conn) -> list[str]:
    """Empty every store table in one statement (ids restart at 1); return their names. The caller
    owns the transaction."""
    tables = store_tables(conn)
    if tables:
        statement = sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in tables)
        )
        with conn.cursor() as cur:
            cur.execute(statement)
    return tables
