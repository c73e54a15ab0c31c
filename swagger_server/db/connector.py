"""The pool's connector threads: the only place connections are opened (never on a request thread,
never under the pool's lock). A thread sleeps until the pool asks for a connection (`pool._opening`
above the number of threads already busy), opens one, retrying with exponential backoff and jitter
while the database is down, and hands it to the pool. Maintenance runs in a thread of its own
(db/maintenance.py), so a backoff here never delays it."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

import psycopg2
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from swagger_server.db.connection import Connection, connect
from swagger_server.db.errors import DatabaseUnavailable, PoolClosed
from swagger_server.text import first_line

if TYPE_CHECKING:
    from swagger_server.db.pool import ConnectionPool

logger = logging.getLogger(__name__)


class Connectors:
    """`count` threads opening connections for one pool."""

    def __init__(self, pool: ConnectionPool, count: int):
        self.pool = pool
        self._busy = 0  # threads opening a connection now (under the pool's lock)
        self._threads = [
            threading.Thread(target=self._run, daemon=True, name=f"pool-{pool.name}-{i}") for i in range(max(1, count))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _run(self) -> None:
        pool = self.pool
        while True:
            with pool._lock:
                while not pool._closed and pool._opening <= self._busy:
                    pool._wakeup.wait()
                if pool._closed:
                    return
                self._busy += 1
            try:
                self._open_one()
            finally:
                with pool._lock:
                    self._busy -= 1

    def _open_one(self) -> None:
        """Open one connection, retrying with exponential backoff and jitter while the database is down."""
        pool = self.pool
        settings = pool.settings
        retrying = Retrying(
            retry=retry_if_exception_type(psycopg2.OperationalError),
            wait=wait_exponential_jitter(
                multiplier=settings.reconnect_initial_delay,
                max=settings.reconnect_max_delay,
                jitter=settings.reconnect_initial_delay,
            ),
            stop=lambda state: pool._closed or not self._demand(),
            before_sleep=self._on_failure,
            sleep=pool._stopping.wait,
            reraise=True,
        )
        conn = None
        try:
            conn = retrying(self._connect)
        except PoolClosed:
            pass
        except Exception as exc:  # OperationalError after the last retry, or anything unexpected:
            if not isinstance(exc, psycopg2.OperationalError):  # a connector thread must never die
                logger.exception("pool %r: unexpected error while connecting", pool.name)
            self._on_failure(None, exc)
            with pool._lock:
                pool._retry_at = 0.0  # nobody is retrying now; the next request tries again
        finally:
            with pool._lock:
                pool._opening -= 1
                if conn is not None:
                    pool._size += 1
                    was_down = pool._down_since is not None
                    pool._down_since, pool._retry_at, pool._last_error = None, 0.0, ""
                    kept = pool._hand_over_locked(conn)
                    if not kept:
                        pool._size -= 1
        if conn is not None:
            pool._count("connections_opened")
            if not kept:
                pool._close_quietly(conn)  # the pool closed meanwhile; closed outside its lock
            elif was_down:
                pool._count("reconnects")
                logger.warning("pool %r: database reachable again", pool.name)

    def _connect(self) -> Connection:
        pool = self.pool
        if pool._closed:
            raise PoolClosed(f"pool {pool.name!r} is closed")
        settings = pool.settings
        began = time.monotonic()
        conn = connect(
            pool.dsn,
            connect_timeout=pool.connect_timeout,
            io_timeout=settings.io_timeout(),
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        pool._timed("create", time.monotonic() - began)
        if pool.configure is not None:
            try:
                pool.configure(conn)
            except BaseException:
                conn.close()
                raise
        # Jitter, so connections made together do not all expire (or idle out) together.
        conn.expires_at = conn.created_at + settings.max_lifetime * random.uniform(0.9, 1.0)
        conn.max_idle = settings.max_idle * random.uniform(0.9, 1.0)
        return conn

    def _demand(self) -> bool:
        pool = self.pool
        with pool._lock:
            return bool(pool._waiters) or pool._size < pool.min_size

    def _on_failure(self, retry_state, exc: BaseException | None = None) -> None:
        """Record the failure. If no connection is open, that is an outage: fail the waiters at once,
        since nothing can serve them. Otherwise they keep waiting for a connection to come back."""
        pool = self.pool
        if exc is None:
            exc = retry_state.outcome.exception()
        message = first_line(exc)
        delay = retry_state.upcoming_sleep if retry_state is not None else 0.0
        with pool._lock:
            pool._count("connection_errors")
            if pool._down_since is None:
                pool._down_since = time.monotonic()
                logger.error(
                    "pool %r: cannot connect to the database (%d connection(s) still open): %s",
                    pool.name,
                    pool._size,
                    message,
                )
            pool._last_error = message
            pool._retry_at = time.monotonic() + delay
            if pool._size == 0:
                pool._fail_waiters_locked(
                    DatabaseUnavailable(
                        f"database unavailable (pool {pool.name!r}): {message}", retry_after=max(1, math.ceil(delay))
                    )
                )
