"""SQL for the database health probe."""

from __future__ import annotations


def probe(conn) -> dict:
    """One round trip that proves the connection works and says who answered."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 AS result, now() AS server_time, current_setting('server_version') AS server_version,"
            " pg_backend_pid() AS backend_pid, current_setting('application_name') AS application_name"
        )
        return cur.one()


def connections_by_application(conn) -> list[dict]:
    """The server's client backends grouped by application_name and state (this query's own excluded)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COALESCE(NULLIF(application_name, ''), '(none)') AS application_name,"
            " COALESCE(state, 'unknown') AS state, count(*)::int AS count"
            " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return cur.all()


def ping(conn) -> None:
    """The cheapest round trip: proves the server answers on this connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
