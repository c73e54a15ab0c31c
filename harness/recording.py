"""A connection that keeps the text of every statement it sends, for the plan guard
(tests/db/test_plans.py) and `make bench-scale` (bench/scale.py): the app's own cursor, so each
query runs exactly as a request runs it, then psycopg2's `query` (the bytes sent) is kept."""

from __future__ import annotations

from swagger_server.db.connection import Connection, Cursor, connect


class Recording(Cursor):
    def execute(self, query, vars=None):
        try:
            return super().execute(query, vars)
        finally:
            if self.query is not None:
                self.connection.sent.append(self.query.decode())


def recording(url: str) -> Connection:
    """A connection (no statement timeout) whose `sent` lists what its cursors sent; a cursor made
    with `cursor_factory=Cursor` on it sends without being recorded."""
    conn = connect(url, connect_timeout=5, io_timeout=None, statement_timeout_ms=0)
    conn.cursor_factory = Recording
    conn.sent = []
    return conn
