"""The pool's maintenance, in a thread of its own (as psycopg_pool's scheduled tasks): every TICK it
closes idle connections past their lifetime, shrinks idle ones above `min`, asks for replacements,
and reports connections held past the leak threshold with the borrower's stack. Its own thread,
so a connector sleeping in a reconnect backoff never delays a leak report or a recycle."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from swagger_server.db.checkout import format_borrower
from swagger_server.db.connection import Connection

if TYPE_CHECKING:
    from swagger_server.db.pool import ConnectionPool

logger = logging.getLogger(__name__)

TICK = 0.25  # seconds between passes


class Maintenance:
    def __init__(self, pool: ConnectionPool):
        self.pool = pool
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"pool-{pool.name}-maintenance")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        # pool._stopping is set by close(): the wait returns at once and the loop ends.
        while not self.pool._stopping.wait(TICK):
            try:
                self.run_once()
            except Exception:  # the maintenance loop must outlive any single bad pass
                logger.exception("pool %r: maintenance failed", self.pool.name)

    def run_once(self) -> None:
        """Recycle idle connections past their lifetime, shrink idle ones above min, report leaks."""
        pool = self.pool
        threshold = pool.settings.leak_threshold
        now = time.monotonic()
        expired: list[Connection] = []
        with pool._lock:
            if pool._closed:
                return
            keep: deque[Connection] = deque()
            # Oldest-used first (the left end), so shrinking removes the coldest connections.
            for conn in pool._idle:
                too_old = now >= conn.expires_at
                too_idle = now - conn.last_used > conn.max_idle and pool._size - len(expired) > pool.min_size
                if too_old or too_idle or conn.closed:
                    expired.append(conn)
                else:
                    keep.append(conn)
            pool._idle = keep
            pool._size -= len(expired)
            pool._top_up_locked()
            leaks = [
                checkout
                for checkout in pool._in_use.values()
                if not checkout.warned and threshold > 0 and now - checkout.since > threshold
            ]
            for checkout in leaks:
                checkout.warned = True
        # Closed outside the lock: a slow close must not stall every checkout.
        for conn in expired:
            pool._count("recycled")
            pool._close_quietly(conn)
        for checkout in leaks:
            pool._count("leaks")
            stack = format_borrower(checkout.frame) if checkout.frame else "(no stack)\n"
            logger.warning(
                "pool %r: connection held for %.1f s by thread %s (leak threshold %.1f s); taken at (innermost first):\n%s",
                pool.name,
                now - checkout.since,
                checkout.thread,
                threshold,
                stack.rstrip(),
            )
