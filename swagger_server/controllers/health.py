"""Health: the process (no database), the pool's statistics, and a live database probe."""
from __future__ import annotations

import psycopg2
from flask import current_app

from swagger_server.controllers.reply import reply
from swagger_server.db.queries import health
from swagger_server.db.pool import DatabaseUnavailable, PoolError, PoolTimeout, TooManyWaiters
from swagger_server.db.request import get_conn

WARN_USAGE = 0.8


def get_health():
    return reply({"status": "ok"}, 200)


def get_db_health():
    """Pool statistics with a status: error if the database is unreachable, warning when under pressure."""
    db = current_app.extensions["db"]
    if db.mode != "pool":
        return reply({"status": "healthy", "mode": db.mode, "warnings": [], "pool": None}, 200)
    stats = db.pool.stats()
    warnings = []
    usage = stats["in_use"] / stats["max"]
    if not stats["database_up"]:
        warnings.append(f"database unreachable for {stats['down_for_s']:.1f} s: {stats['last_error']}")
    if usage >= WARN_USAGE:
        warnings.append(f"{stats['in_use']} of {stats['max']} connections in use ({usage:.0%})")
    if stats["waiting"]:
        warnings.append(f"{stats['waiting']} request(s) waiting for a connection")
    body = {"mode": db.mode, "usage": round(usage, 3), "warnings": warnings, "pool": stats,
            "connections": _database_view(db) if stats["database_up"] else None}
    replica = db.replica
    if replica is not None:
        body["replica"] = replica.stats()
        if body["replica"]["routing"] != "replica":
            warnings.append(f"reads go to the {body['replica']['routing']}: replica "
                            f"{body['replica']['last_error'] or 'lag ' + str(body['replica']['lag_s']) + ' s'}")
    status = "error" if not stats["database_up"] else ("warning" if warnings else "healthy")
    return reply({"status": status, **body}, 200)


def test_db():
    return reply(health.probe(get_conn()), 200)


def _database_view(db) -> list[dict] | None:
    """pg_stat_activity grouped by application, on a connection of our own pool if one is free soon."""
    try:
        conn = db.pool.getconn(timeout=0.5)
    except PoolError:
        return None
    try:
        return health.connections_by_application(conn)
    except psycopg2.Error:
        return None
    finally:
        db.pool.putconn(conn)


def get_ready():
    """Readiness: can this worker reach the database now?"""
    db = current_app.extensions["db"]
    if db.mode != "pool":
        health.probe(get_conn())
        return reply({"status": "ready", "pool": "checked"}, 200)
    pool = db.pool
    try:
        conn = pool.getconn(timeout=0.5)
    except (PoolTimeout, TooManyWaiters):
        if pool.stats()["size"] == 0:            # nothing open: still connecting, not busy
            raise DatabaseUnavailable("no connection to the database could be made yet") from None
        return reply({"status": "ready", "pool": "busy"}, 200)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        pool.putconn(conn)
    return reply({"status": "ready", "pool": "checked"}, 200)
