"""The pool's connector threads: the only place connections are opened (never on a request thread,
never under the pool's lock). A connector knows how to open one connection and nothing of the pool's
state: it asks the pool for work (`wait_for_connect_request`), opens one connection, retrying with
exponential backoff and jitter while the database is down and the pool still wants it, and reports
back through pool methods (`connect_failed`, `connect_finished`). As psycopg_pool's workers, which
run tasks that call the pool, never the other way round. Maintenance runs in a thread of its own
(db/maintenance.py), so a backoff here never delays it."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import psycopg2
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from swagger_server.db.connection import Connection, connect
from swagger_server.db.errors import PoolClosed
from swagger_server.text import first_line

if TYPE_CHECKING:
    from swagger_server.db.pool import ConnectionPool

logger = logging.getLogger(__name__)


class Connectors:
    """`count` threads opening connections for one pool."""

    def __init__(self, pool: ConnectionPool, count: int):
        self.pool = pool
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
        while self.pool.wait_for_connect_request():
            conn, seconds = None, 0.0
            try:
                conn, seconds = self._open_one()
            finally:  # a connector thread must never die, nor leave the pool counting its request
                self.pool.connect_finished(conn, seconds)

    def _open_one(self) -> tuple[Connection | None, float]:
        """One connection and the seconds it took, retrying with exponential backoff and jitter while
        the database is down; (None, 0) when the pool closed or stopped wanting it."""
        pool = self.pool
        settings = pool.settings
        retrying = Retrying(
            retry=retry_if_exception_type(psycopg2.OperationalError),
            wait=wait_exponential_jitter(
                multiplier=settings.reconnect_initial_delay,
                max=settings.reconnect_max_delay,
                jitter=settings.reconnect_initial_delay,
            ),
            stop=lambda state: not pool.wants_connection(),
            before_sleep=lambda state: pool.connect_failed(first_line(state.outcome.exception()), state.upcoming_sleep),
            sleep=pool.sleep,
            reraise=True,
        )
        try:
            return retrying(self._connect)
        except PoolClosed:
            return None, 0.0
        except Exception as exc:  # OperationalError after the last retry, or anything unexpected
            if not isinstance(exc, psycopg2.OperationalError):
                logger.exception("pool %r: unexpected error while connecting", pool.name)
            pool.connect_failed(first_line(exc), 0.0)
            return None, 0.0

    def _connect(self) -> tuple[Connection, float]:
        pool = self.pool
        if pool.closed:
            raise PoolClosed(f"pool {pool.name!r} is closed")
        settings = pool.settings
        began = time.monotonic()
        conn = connect(
            pool.dsn,
            connect_timeout=pool.connect_timeout,
            io_timeout=settings.io_timeout(),
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        seconds = time.monotonic() - began
        if pool.configure is not None:
            try:
                pool.configure(conn)
            except BaseException:
                conn.close()
                raise
        # Jitter, so connections made together do not all expire (or idle out) together.
        conn.expires_at = conn.created_at + settings.max_lifetime * random.uniform(0.9, 1.0)
        conn.max_idle = settings.max_idle * random.uniform(0.9, 1.0)
        return conn, seconds
