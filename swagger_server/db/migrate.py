"""`db upgrade`: apply the SQL files in db/schema/ that the database has not seen, in name order.

Each file runs in its own transaction under an advisory lock, so two processes upgrading at once
serialise, and a file that fails leaves nothing behind. Running it twice changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg2

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schema"
_LOCK_ID = 0x5707E  # any constant; it names this application's migration lock


def pending(conn) -> list[Path]:
    """The schema files not yet applied to the database behind `conn`."""
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
    conn.commit()
    return [p for p in sorted(SCHEMA_DIR.glob("*.sql")) if p.name not in done]


def upgrade(dsn: str) -> list[str]:
    """Apply pending schema files; return the names applied. Raises psycopg2.Error on failure."""
    applied = []
    conn = psycopg2.connect(dsn)
    try:
        for path in pending(conn):
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (path.name,))
                if cur.fetchone():  # another process applied it while we waited for the lock
                    continue
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,))
            logger.info("applied %s", path.name)
            applied.append(path.name)
    finally:
        conn.close()
    return applied
