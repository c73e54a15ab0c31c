"""Per-request connections: `get_conn()` takes one on first use, teardown gives it back.

`Database` belongs to one app and owns that app's pool in the current process. In gunicorn the pool is
opened by the `post_fork` hook (through wsgi.py); elsewhere it is opened lazily on first use. If the
process has forked since the pool was made (the pid changed), a fresh pool is made and the parent's is
left untouched: libpq sockets must not cross a fork.
"""
from __future__ import annotations

import logging
import os
import threading

import psycopg2
from flask import current_app, g

from swagger_server.config import Settings
from swagger_server.db.connection import Connection, connect, install_wait_callback
from swagger_server.db.pool import ConnectionPool, DatabaseUnavailable, keep_inherited

logger = logging.getLogger(__name__)


class Database:
    """The app's access to PostgreSQL: a pool per process (mode `pool`) or a connection per request
    (mode `none`, the slow baseline kept for benchmarks)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.mode = settings.pool.mode
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def application_name(self) -> str:
        """What `pg_stat_activity.application_name` shows for this process: names the worker pid."""
        return f"store-api:{os.getpid()}"

    def open(self) -> ConnectionPool | None:
        """Create this process's pool now (gunicorn post_fork). Idempotent; no-op in mode `none`."""
        if self.mode != "pool":
            install_wait_callback()
            return None
        with self._lock:
            if self._pool is not None and self._pool.pid == os.getpid() and not self._pool.closed:
                return self._pool
            if self._pool is not None and self._pool.pid != os.getpid():
                logger.warning("fork detected: pool of process %d replaced in process %d",
                               self._pool.pid, os.getpid())
                # Not closed, not even locked: its lock may have been held by a parent thread at the
                # fork, and its sockets are the parent's. Kept referenced so it is never collected.
                keep_inherited(self._pool)
            self._pool = ConnectionPool(self.settings.database.dsn(self.application_name()), self.settings.pool,
                                        connect_timeout=self.settings.database.connect_timeout)
            return self._pool

    @property
    def pool(self) -> ConnectionPool | None:
        """This process's pool, opened on first use; None in mode `none`."""
        if self.mode != "pool":
            return None
        pool = self._pool
        if pool is None or pool.pid != os.getpid():
            return self.open()
        return pool            # possibly closed (shutting down): its getconn raises PoolClosed

    def close(self, timeout: float | None = None) -> None:
        """Close this process's pool (worker shutdown). Idempotent."""
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.close(timeout=self.settings.server.graceful_timeout if timeout is None else timeout)

    # -- per request ---------------------------------------------------------------------------------
    def get_conn(self) -> Connection:
        """The request's connection: the same one for the whole request, taken on first use.

        Raises the pool's errors (PoolTimeout, DatabaseUnavailable, ...), which the API maps to 503.
        """
        conn = g.get("db_conn")
        if conn is not None:
            return conn
        if self.mode == "pool":
            conn = self.pool.getconn()
        else:
            try:
                conn = connect(self.settings.database.dsn(self.application_name()),
                               connect_timeout=self.settings.database.connect_timeout,
                               io_timeout=self.settings.pool.io_timeout(),
                               statement_timeout_ms=self.settings.pool.statement_timeout_ms)
            except psycopg2.OperationalError as exc:
                raise DatabaseUnavailable(f"database unavailable: {str(exc).strip().splitlines()[0]}") from None
        g.db_conn = conn
        return conn

    def teardown(self, exc: BaseException | None = None) -> None:
        """Give the request's connection back. Never commits: the pool rolls back what is left open."""
        conn = g.pop("db_conn", None)
        if conn is None:
            return
        if self.mode == "pool":
            self._pool.putconn(conn)
        elif not conn.closed:
            conn.close()

    def init_app(self, flask_app) -> None:
        flask_app.extensions["db"] = self
        flask_app.teardown_appcontext(self.teardown)


def get_conn() -> Connection:
    """The current request's database connection (see Database.get_conn)."""
    return current_app.extensions["db"].get_conn()
