"""SQL for the database health probe."""
from __future__ import annotations


def probe(conn) -> dict:
    """One round trip that proves the connection works and says who answered."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS result, now() AS server_time, current_setting('server_version') AS server_version,"
                    " pg_backend_pid() AS backend_pid, current_setting('application_name') AS application_name")
        return cur.one()
