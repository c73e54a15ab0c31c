"""The connection pool: the only owner of connections' lifecycle.

Checkout takes the most recently used idle connection (LIFO keeps a hot set hot and lets the rest
age out). When none is idle the caller joins a FIFO queue of waiters and, if the pool is below its
maximum, asks a background connector to open one; whichever comes first, a returned connection or a
new one, goes to the head of the queue. Connections are never opened on the request thread or under
the lock.

Only this class changes the pool's state (the lock, the counts, the idle and waiting queues, the
outage record), as psycopg_pool's: its connector threads (db/connector.py) open one connection at a
time and report back through `connect_failed`/`connect_finished`; its maintenance ticker
(db/maintenance.py) calls `maintain`. Neither reads or writes a private field.
"""

from __future__ import annotations

import logging
import math
import os
import select
import sys
import threading
import time
from collections import deque

import psycopg2
import psycopg2.extensions as ext

from swagger_server.config import PoolSettings
from swagger_server.db.checkout import Checkout, Waiter, borrower
from swagger_server.db.connection import Connection, install_wait_callback
from swagger_server.db.connector import Connectors
from swagger_server.db.errors import (
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolTimeout,
    PoolUsedAcrossFork,
    TooManyWaiters,
)
from swagger_server.db.maintenance import Maintenance
from swagger_server.db.pool_types import COUNTERS, TIMINGS_KEPT, Configure, PoolStats, PoolVerbs, empty_stats

logger = logging.getLogger(__name__)

_IDLE = ext.TRANSACTION_STATUS_IDLE
_ROLLBACK_STATES = (ext.TRANSACTION_STATUS_INTRANS, ext.TRANSACTION_STATUS_INERROR)

# Pools inherited across a fork are kept referenced forever: letting them be garbage-collected would
# make libpq send a Terminate message on sockets the parent still uses.
_inherited_from_parent: list = []


def keep_inherited(pool: ConnectionPool) -> None:
    """Keep a pool made by the parent process alive, untouched, in this (forked) process."""
    _inherited_from_parent.append(pool)


class ConnectionPool(PoolVerbs):
    """A bounded, thread-safe pool of `Connection`s for one process. `getconn()` waits up to
    `settings.timeout`; `putconn()` resets and returns; `close()` is idempotent. It refuses to be
    used from a process other than the one that made it."""

    holds_connections = True  # counted by the start-up budget check

    def __init__(
        self,
        dsn: str,
        settings: PoolSettings,
        *,
        connect_timeout: float = 3.0,
        name: str = "primary",
        connector_threads: int = 2,
        configure: Configure | None = None,
    ):
        # `configure` as psycopg_pool's: each new connection's first caller (connector.py).
        self.dsn, self.name, self.configure = dsn, name, configure
        self.settings = settings
        self.min_size = settings.min_connections
        self.max_size = settings.max_connections
        self.timeout = settings.timeout
        self.connect_timeout = connect_timeout
        self.pid = os.getpid()
        install_wait_callback()

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # the connector threads sleep on this
        self._stopping = threading.Event()  # interrupts backoff sleeps on close()
        self._idle: deque[Connection] = deque()
        self._waiters: deque[Waiter] = deque()
        self._in_use: dict[int, Checkout] = {}
        self._size = 0  # open connections: idle + in use
        self._opening = 0  # connections requested from the connector and not yet open
        self._connecting = 0  # of those, the ones a connector thread is opening now
        self._closed = False
        self._retry_at = 0.0  # monotonic time of the next reconnect attempt while the database is down
        self._last_error = ""
        self._down_since: float | None = None
        self._count_lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._timings = deque(maxlen=TIMINGS_KEPT)

        self._connectors = Connectors(self, connector_threads)
        self._maintenance = Maintenance(self)
        self._connectors.start()
        self._maintenance.start()
        with self._lock:
            self._top_up_locked()

    # -- public verbs --------------------------------------------------------------------------------
    def getconn(self, timeout: float | None = None) -> Connection:
        """Take a connection, waiting up to `timeout` (default: the pool's) for one to be free.

        Raises PoolTimeout, TooManyWaiters, DatabaseUnavailable or PoolClosed; never returns a
        connection whose socket is known dead.
        """
        if os.getpid() != self.pid:
            raise PoolUsedAcrossFork(
                f"pool {self.name!r} was created in process {self.pid} and cannot be used "
                f"in process {os.getpid()} (libpq sockets must not cross a fork)"
            )
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + timeout
        # Leak detection keeps where the connection was taken: (code, line) pairs, about 2 µs; turned
        # into text only if the connection is reported (traceback's StackSummary took 25 µs per checkout).
        frame = borrower(sys._getframe(1)) if self.settings.leak_threshold > 0 else None
        thread = threading.current_thread().name
        self._count("requests")
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if self._idle:
                    conn = self._idle.pop()
                    self._in_use[id(conn)] = Checkout(time.monotonic(), thread, frame)
                    waiter = None
                else:
                    conn = None
                    waiter = self._enqueue_locked(thread, frame)
            if conn is not None:
                if self._usable(conn, deadline):
                    return conn
                self._discard(conn, "dead on checkout")
                if time.monotonic() >= deadline:
                    # Checking dead connections used up the wait: the database is not answering.
                    self._count("unavailable")
                    raise DatabaseUnavailable(
                        f"no working connection within {timeout:.2f} s "
                        f"(pool {self.name!r}): idle connections did not answer"
                    )
                continue
            return self._wait(waiter, start, deadline)

    def putconn(self, conn: Connection) -> None:
        """Give a connection back: roll back an open transaction, discard a broken or expired one."""
        with self._lock:
            checkout = self._in_use.pop(id(conn), None)
        if checkout is None:
            logger.error("pool %r: putconn of a connection it did not hand out (or returned twice)", self.name)
            return
        now = time.monotonic()
        self._timed("use", now - checkout.since)
        if checkout.warned:
            logger.warning(
                "pool %r: connection (backend %s) came back after %.1f s",
                self.name,
                conn.backend_pid,
                now - checkout.since,
            )
        if not self._reset(conn):
            self._forget(conn, "broken on return")
            return
        if self._closed or now >= conn.expires_at:
            if not self._closed:
                self._count("recycled")
            self._forget(conn, "recycled at max lifetime" if not self._closed else "pool closed")
            return
        conn.last_used = now
        with self._lock:
            kept = self._hand_over_locked(conn)
            if not kept:
                self._size -= 1
        if not kept:
            self._close_quietly(conn)  # the pool closed meanwhile; never closed under the lock

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: refuse new checkouts, wait up to `timeout` for connections in use, close all.

        Idempotent; safe to call from the worker's shutdown path more than once.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fail_waiters_locked(PoolClosed(f"pool {self.name!r} is closed"))
            self._wakeup.notify_all()
        self._stopping.set()
        if os.getpid() != self.pid:
            _inherited_from_parent.append(self)  # never touch a parent's sockets
            return
        deadline = time.monotonic() + timeout
        while self._in_use and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            idle, self._idle = list(self._idle), deque()
            self._size -= len(idle)
            left = len(self._in_use)
        for conn in idle:
            self._close_quietly(conn)
        if left:
            logger.warning("pool %r closed with %d connection(s) still in use", self.name, left)
        self._connectors.join(timeout=self.connect_timeout + 1)
        self._maintenance.join(timeout=1.0)
        logger.info("pool %r closed", self.name)

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self._counters[name] += n

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PoolStats:
        """A snapshot: sizes, waiting requests, database state and cumulative counters."""
        snapshot = empty_stats(self.name, self.pid, self.min_size, self.max_size)
        with self._lock:
            snapshot.update(
                size=self._size,
                idle=len(self._idle),
                in_use=len(self._in_use),
                waiting=len(self._waiters),
                opening=self._opening,
                database_up=self._down_since is None,
                last_error=self._last_error or None,
                down_for_s=round(time.monotonic() - self._down_since, 3) if self._down_since else 0.0,
            )
        with self._count_lock:
            snapshot.update(self._counters)  # type: ignore[typeddict-item]
        return snapshot

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until `min` connections are open; raise DatabaseUnavailable if they are not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._size >= self.min_size:
                    return
            time.sleep(0.01)
        raise DatabaseUnavailable(
            f"pool {self.name!r}: {self._size} of {self.min_size} connections open "
            f"after {timeout:.2f} s: {self._last_error}"
        )

    # -- for the connector threads and the maintenance ticker: their only way into the state ---------
    def wait_for_connect_request(self) -> bool:
        """Block a connector until a connection is wanted that no other connector is opening, and
        claim it; False once the pool is closed."""
        with self._lock:
            while not self._closed and self._opening <= self._connecting:
                self._wakeup.wait()
            if self._closed:
                return False
            self._connecting += 1
            return True

    def wants_connection(self) -> bool:
        """Is a new connection still wanted (a waiter, or fewer than `min` open)? A reconnect backoff
        ends when it is not."""
        with self._lock:
            return not self._closed and (bool(self._waiters) or self._size < self.min_size)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True, at once, when the pool is closing."""
        return self._stopping.wait(seconds)

    def connect_failed(self, message: str, retry_in: float) -> None:
        """A connection attempt failed. If no connection is open, that is an outage: fail the waiters
        at once, since nothing can serve them. Otherwise they keep waiting for one to come back."""
        self._count("connection_errors")
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.error(
                    "pool %r: cannot connect to the database (%d connection(s) still open): %s",
                    self.name,
                    self._size,
                    message,
                )
            self._last_error = message
            self._retry_at = time.monotonic() + retry_in
            if self._size == 0:
                self._fail_waiters_locked(
                    DatabaseUnavailable(
                        f"database unavailable (pool {self.name!r}): {message}",
                        retry_after=max(1, math.ceil(retry_in)),
                    )
                )

    def connect_finished(self, conn: Connection | None, seconds: float) -> None:
        """A connector is done with its request: `conn` opened in `seconds`, or None when it gave up
        (nobody is retrying now: the next request tries again) or the pool closed."""
        kept = was_down = False
        with self._lock:
            self._connecting -= 1
            self._opening -= 1
            if conn is None:
                self._retry_at = 0.0
            else:
                was_down = self._down_since is not None
                self._down_since, self._retry_at, self._last_error = None, 0.0, ""
                kept = self._hand_over_locked(conn)
                if kept:
                    self._size += 1
        if conn is None:
            return
        self._timed("create", seconds)
        self._count("connections_opened")
        if not kept:
            self._close_quietly(conn)  # the pool closed meanwhile; closed outside its lock
        elif was_down:
            self._count("reconnects")
            logger.warning("pool %r: database reachable again", self.name)

    def maintain(self, now: float) -> list[Checkout]:
        """One maintenance pass: close idle connections past their lifetime (or idle above `min`),
        ask for replacements; return the checkouts newly past the leak threshold, to be reported."""
        threshold = self.settings.leak_threshold
        expired: list[Connection] = []
        with self._lock:
            if self._closed:
                return []
            keep: deque[Connection] = deque()
            # Oldest-used first (the left end), so shrinking removes the coldest connections.
            for conn in self._idle:
                too_old = now >= conn.expires_at
                too_idle = now - conn.last_used > conn.max_idle and self._size - len(expired) > self.min_size
                if too_old or too_idle or conn.closed:
                    expired.append(conn)
                else:
                    keep.append(conn)
            self._idle = keep
            self._size -= len(expired)
            self._top_up_locked()
            leaks = [c for c in self._in_use.values() if not c.warned and 0 < threshold < now - c.since]
            for checkout in leaks:
                checkout.warned = True
        # Closed outside the lock: a slow close must not stall every checkout.
        for conn in expired:
            self._count("recycled")
            self._close_quietly(conn)
        self._count("leaks", len(leaks))
        return leaks

    # -- checkout internals -------------------------------------------------------------------------
    def _enqueue_locked(self, thread: str, frame) -> Waiter:
        now = time.monotonic()
        if self._retry_at > now and self._size == 0:
            # Fail fast: nothing is open, the last connection attempt failed and the next is
            # scheduled. Waiting would only hold the client for the full timeout and then fail anyway.
            # (With connections open, a failed connect is not an outage: wait for one to come back.)
            self._count("unavailable")
            raise DatabaseUnavailable(
                f"database unavailable (pool {self.name!r}): {self._last_error}",
                retry_after=max(1, math.ceil(self._retry_at - now)),
            )
        if len(self._waiters) >= self.settings.max_waiting:
            self._count("rejected")
            raise TooManyWaiters(
                f"pool {self.name!r}: {len(self._waiters)} requests already waiting for {self.max_size} connections"
            )
        waiter = Waiter(thread, frame)
        self._waiters.append(waiter)
        # Only as many new connections as waiters that connections already being opened won't serve.
        self._top_up_locked()
        return waiter

    def _wait(self, waiter: Waiter, start: float, deadline: float) -> Connection:
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        waited = time.monotonic() - start
        with self._lock:
            self._count("waited")
            self._count("wait_ms", int(waited * 1000))
            # The timeout may fire just as another thread resolves the waiter: expire() says which won.
            if waiter.expire():
                self._waiters.remove(waiter)
                if self._size == 0 and (self._opening or self._last_error):
                    # Nothing is open and nothing could be made in time: that is an outage, not load.
                    self._count("unavailable")
                    raise DatabaseUnavailable(
                        f"couldn't connect to the database within {waited:.2f} s (pool {self.name!r})"
                        + (f": {self._last_error}" if self._last_error else "")
                    )
                self._count("timeouts")
                raise PoolTimeout(
                    f"couldn't get a connection after {waited:.2f} s (pool {self.name!r}: "
                    f"{len(self._in_use)} in use, {len(self._waiters)} waiting, max {self.max_size})"
                )
        if waiter.error is not None:
            raise waiter.error
        return waiter.conn

    def _usable(self, conn: Connection, deadline: float) -> bool:
        """Decide whether an idle connection can be handed out, at the least cost that is safe.

        Zero round trips for a hot connection: an idle connection's socket must have nothing to read;
        if it does, the server has closed it (restart, pg_terminate_backend, idle timeout). Only a
        connection idle longer than `check_idle_after` pays a ping, bounded by `ping_timeout`.
        """
        if conn.closed:
            return False
        now = time.monotonic()
        if now >= conn.expires_at:
            self._count("recycled")
            return False
        try:
            if select.select([conn.fileno()], [], [], 0)[0]:
                return False
        except (OSError, ValueError, psycopg2.InterfaceError):
            return False
        if now - conn.last_used > self.settings.check_idle_after:
            self._count("pings")
            # The ping is bounded by ping_timeout and by what is left of the caller's wait.
            saved, conn.io_timeout = conn.io_timeout, max(0.001, min(self.settings.ping_timeout, deadline - now))
            try:
                with conn.cursor() as cur:
                    ext.cursor.execute(cur, "SELECT 1")
            except psycopg2.Error:
                return False
            finally:
                conn.io_timeout = saved
        return True

    def _reset(self, conn: Connection) -> bool:
        """Bring a returned connection back to idle; False if it must be discarded."""
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status == _IDLE:
            if conn.notices:
                del conn.notices[:]
            return True
        if status in _ROLLBACK_STATES:
            self._count("rollbacks")
            try:
                with conn.cursor() as cur:
                    ext.cursor.execute(cur, "ROLLBACK")
            except psycopg2.Error:
                return False  # the slot is freed by the caller, unlike psycopg2's own pool
            return conn.get_transaction_status() == _IDLE
        return False  # ACTIVE or UNKNOWN: in the middle of something, or broken

    def _hand_over_locked(self, conn: Connection) -> bool:
        """Give a ready connection to the first waiter, or make it idle. False when the pool is
        closed: the caller closes the connection, after releasing the lock (a close can be slow)."""
        if self._closed:
            return False
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.set(conn):
                self._in_use[id(conn)] = Checkout(time.monotonic(), waiter.thread, waiter.frame)
                return True
        self._idle.append(conn)
        return True

    def _fail_waiters_locked(self, error: PoolError) -> None:
        """Fail every queued waiter with `error`, now, under the lock (see _Waiter)."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.fail(error)

    def _discard(self, conn: Connection, why: str) -> None:
        """Drop a connection that was checked out (dead on checkout)."""
        with self._lock:
            self._in_use.pop(id(conn), None)
        self._count("discarded_dead")
        self._forget(conn, why)

    def _forget(self, conn: Connection, why: str) -> None:
        """Close a connection that no longer counts and open a replacement if anyone needs one."""
        logger.debug("pool %r: closing connection (backend %s): %s", self.name, conn.backend_pid, why)
        self._close_quietly(conn)
        with self._lock:
            self._size -= 1
            self._top_up_locked()

    def _close_quietly(self, conn: Connection) -> None:
        self._count("connections_closed")
        try:
            conn.close()
        except psycopg2.Error:
            logger.debug("pool %r: error closing a connection", self.name, exc_info=True)

    def _top_up_locked(self) -> None:
        """Ask for new connections: one per waiter that no opening connection will serve, then up to min."""
        if self._closed:
            return
        wanted = max(len(self._waiters), self.min_size - self._size) - self._opening
        room = self.max_size - self._size - self._opening
        for _ in range(max(0, min(wanted, room))):
            self._opening += 1
            self._wakeup.notify()
