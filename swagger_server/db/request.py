"""Per-request connections: `get_conn()` takes one on first use, teardown gives it back.

`Database` belongs to one app and owns that app's pool in the current process. In gunicorn the pool is
opened by the `post_fork` hook (through wsgi.py); elsewhere it is opened lazily on first use. If the
process has forked since the pool was made (the pid changed), a fresh pool is made and the parent's is
left untouched: libpq sockets must not cross a fork.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Callable

import psycopg2
from flask import current_app, g, request

from swagger_server.config import Settings
from swagger_server.db.connection import Connection, connect, install_wait_callback
from swagger_server.db.pool import ConnectionPool, DatabaseUnavailable, PoolError, keep_inherited
from swagger_server.errors import ApiError
from swagger_server.db.replica import CONSISTENCY_HEADER, Replica, parse_lsn, retry_on_primary

logger = logging.getLogger(__name__)


class Database:
    """The app's access to PostgreSQL: a pool per process (mode `pool`) or a connection per request
    (mode `none`, the slow baseline kept for benchmarks)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.mode = settings.pool.mode
        self._pool: ConnectionPool | None = None
        self._replica: Replica | None = None
        # Called after each checkout with the pool's name and the seconds waited (metrics, access log).
        self.on_checkout: Callable[[str, float], None] | None = None
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
                if self._replica is not None:
                    keep_inherited(self._replica.pool)
            self._pool = ConnectionPool(self.settings.database.dsn(self.application_name()), self.settings.pool,
                                        connect_timeout=self.settings.database.connect_timeout)
            self._replica = Replica(self.settings, self.application_name()) if self.settings.replica.enabled \
                else None
            return self._pool

    @property
    def replica(self) -> Replica | None:
        """This process's replica (pool and lag monitor), or None when none is configured."""
        if self.mode != "pool" or not self.settings.replica.enabled:
            return None
        self.pool                 # opens both in a new process
        return self._replica

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
            pool, replica = self._pool, self._replica
        if replica is not None:
            replica.close(timeout=self.settings.server.graceful_timeout if timeout is None else timeout)
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
        start = time.perf_counter()
        if g.get("db_read_only"):
            conn = self._replica_conn()
            if conn is not None:
                g.db_conn, g.db_role = conn, "replica"
                self._checked_out("replica", start)
                return conn
        if self.mode == "pool":
            conn = self.pool.getconn()
            conn.track_lsn = self._replica is not None
            conn.commit_lsn = None
        else:
            try:
                conn = connect(self.settings.database.dsn(self.application_name()),
                               connect_timeout=self.settings.database.connect_timeout,
                               io_timeout=self.settings.pool.io_timeout(),
                               statement_timeout_ms=self.settings.pool.statement_timeout_ms)
            except psycopg2.OperationalError as exc:
                raise DatabaseUnavailable(f"database unavailable: {str(exc).strip().splitlines()[0]}") from None
        g.db_conn, g.db_role = conn, "primary"
        self._checked_out("primary", start)
        return conn

    def _checked_out(self, pool: str, start: float) -> None:
        if self.on_checkout is not None:
            self.on_checkout(pool, time.perf_counter() - start)

    def _replica_conn(self) -> Connection | None:
        """A replica connection for this read, or None when the read should go to the primary."""
        replica = self.replica
        if replica is None or replica.route(g.get("db_min_lsn", 0)) is not None:
            return None
        try:
            return replica.pool.getconn()
        except PoolError as exc:
            replica.failed(exc)
            return None

    def teardown(self, exc: BaseException | None = None) -> None:
        """Give the request's connection back. Never commits: the pool rolls back what is left open."""
        conn = g.pop("db_conn", None)
        role = g.pop("db_role", "primary")
        if conn is None:
            return
        if self.mode == "pool":
            (self._replica.pool if role == "replica" else self._pool).putconn(conn)
        elif not conn.closed:
            conn.close()

    def init_app(self, flask_app) -> None:
        flask_app.extensions["db"] = self
        flask_app.teardown_appcontext(self.teardown)
        flask_app.after_request(_consistency_token)


def _consistency_token(response):
    """After a committed write (with a replica configured): the WAL position to read it back at."""
    conn = g.get("db_conn")
    lsn = getattr(conn, "commit_lsn", None) if g.get("db_role") == "primary" else None
    if lsn:
        response.headers[CONSISTENCY_HEADER] = lsn
    return response


def read_only(func):
    """Mark a controller as read-only: it may be served by the replica (see db/replica.py).

    If the replica fails while serving it, the whole handler runs again on the primary: a read-only
    handler has no side effects, so running it twice is safe.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        db = current_app.extensions["db"]
        if db.replica is None:
            return func(*args, **kwargs)
        try:
            g.db_min_lsn = parse_lsn(request.headers.get(CONSISTENCY_HEADER))
        except ValueError:
            raise ApiError(f"{CONSISTENCY_HEADER} must be a WAL position like 0/16B3748, as a write returned it",
                           field=CONSISTENCY_HEADER) from None
        g.db_read_only = True
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if g.get("db_role") != "replica" or not retry_on_primary(exc):
                raise
            db.replica.failed(exc)
            db.teardown()                       # the pool discards the broken connection
            g.db_read_only = False
            return func(*args, **kwargs)
        finally:
            g.db_read_only = False
    return wrapper


def get_conn() -> Connection:
    """The current request's database connection (see Database.get_conn)."""
    return current_app.extensions["db"].get_conn()
