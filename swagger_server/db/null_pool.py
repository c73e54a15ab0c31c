"""A pool that keeps nothing: a new connection on every checkout, closed when it is given back.

`[POOL] mode = none`, the slow baseline the benchmark compares against (as psycopg_pool's
NullConnectionPool). It has the pool's verbs and an honest `stats()`, so that nothing above the
database layer needs to know which kind it holds.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import psycopg2

from swagger_server.config import PoolSettings
from swagger_server.db.connection import Connection, connect, install_wait_callback
from swagger_server.db.errors import DatabaseUnavailable, PoolClosed
from swagger_server.db.pool_types import COUNTERS, TIMINGS_KEPT, Configure, PoolStats, PoolVerbs, empty_stats
from swagger_server.text import first_line


class NullPool(PoolVerbs):
    """Connection per checkout. `getconn()` connects (DatabaseUnavailable if it cannot); `putconn()` closes."""

    holds_connections = False  # the start-up budget check has nothing to count

    def __init__(
        self,
        dsn: str,
        settings: PoolSettings,
        *,
        connect_timeout: float = 3.0,
        name: str = "primary",
        configure: Configure | None = None,
    ):
        self.dsn = dsn
        self.configure = configure  # as ConnectionPool's: called with each new connection (here, each checkout)
        self.name = name
        self.settings = settings
        self.timeout = settings.timeout
        self.connect_timeout = connect_timeout
        self.pid = os.getpid()
        self.min_size, self.max_size = 0, settings.max_connections
        self._closed = False
        self._lock = threading.Lock()
        self._in_use = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._timings = deque(maxlen=TIMINGS_KEPT)
        install_wait_callback()

    def getconn(self, timeout: float | None = None) -> Connection:
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        self._count("requests")
        began = time.monotonic()
        try:
            conn = connect(
                self.dsn,
                connect_timeout=self.connect_timeout,
                io_timeout=self.settings.io_timeout(),
                statement_timeout_ms=self.settings.statement_timeout_ms,
            )
        except psycopg2.OperationalError as exc:
            self._count("connection_errors")
            self._count("unavailable")
            raise DatabaseUnavailable(f"database unavailable: {first_line(exc)}") from None
        self._count("connections_opened")
        self._timed("create", time.monotonic() - began)
        if self.configure is not None:
            try:
                self.configure(conn)
            except BaseException:
                conn.close()
                raise
        with self._lock:
            self._in_use += 1
        return conn

    def putconn(self, conn: Connection) -> None:
        with self._lock:
            self._in_use -= 1
        self._count("connections_closed")
        if not conn.closed:
            conn.close()

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Nothing to warm."""

    def stats(self) -> PoolStats:
        with self._lock:
            in_use = self._in_use
            counters = dict(self._counters)
        stats = empty_stats(self.name, self.pid, 0, self.max_size)
        stats.update(size=in_use, in_use=in_use, **counters)  # type: ignore[typeddict-item]
        return stats

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1
