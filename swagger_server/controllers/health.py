"""Health: the process (no database), the pools' statistics, readiness and a live database probe."""

from __future__ import annotations

import psycopg2

from swagger_server import state as app_state
from swagger_server.controllers.reply import reply
from swagger_server.db.errors import DatabaseUnavailable, PoolError, PoolTimeout, TooManyWaiters
from swagger_server.db.queries import health
from swagger_server.request_scope import get_conn
from swagger_server.version import VERSION


def get_health():
    return reply({"status": "ok", "version": VERSION}, 200)


def get_db_health():
    """The pools' statistics and status (Database.health), and the database's view of its clients."""
    db = app_state.current().database
    body = db.health()
    body["connections"] = _database_view(db.pool) if body["pool"]["database_up"] else None
    return reply(body, 200)


def test_db():
    return reply(health.probe(get_conn()), 200)


def get_ready():
    """Readiness: can this worker reach the database now, and does it have the schema this code
    needs? At most one query: `SELECT 1`, or while the schema is not known current, the schema check
    (503 naming `db upgrade` while behind)."""
    db = app_state.current().database
    pool = db.pool
    try:
        with pool.connection(timeout=0.5) as conn:
            if db.schema_current:
                health.ping(conn)
            else:
                db.check_schema(conn)
    except (PoolTimeout, TooManyWaiters):
        if pool.stats()["size"] == 0:  # nothing open: still connecting, not busy
            raise DatabaseUnavailable("no connection to the database could be made yet") from None
        return reply({"status": "ready", "pool": "busy"}, 200)
    return reply({"status": "ready", "pool": "checked"}, 200)


def _database_view(pool) -> list[dict] | None:
    """pg_stat_activity grouped by application, on a connection of our own pool if one is free soon."""
    try:
        with pool.connection(timeout=0.5) as conn:
            return health.connections_by_application(conn)
    except (PoolError, psycopg2.Error):
        return None
