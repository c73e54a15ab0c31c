"""Health: the process (no database), the pool's statistics, and a live database probe."""
from __future__ import annotations

from flask import current_app

from swagger_server.controllers.reply import reply
from swagger_server.db.queries import health
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
    body = {"mode": db.mode, "usage": round(usage, 3), "warnings": warnings, "pool": stats}
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
