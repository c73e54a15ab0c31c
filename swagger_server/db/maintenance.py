"""The pool's maintenance ticker, in a thread of its own (as psycopg_pool's scheduler): every TICK it
asks the pool for one maintenance pass (`ConnectionPool.maintain`: recycle idle connections past
their lifetime, shrink idle ones above `min`, ask for replacements) and reports the connections held
past the leak threshold with the borrower's stack. It changes no pool state itself. Its own thread,
so a connector sleeping in a reconnect backoff never delays a leak report or a recycle."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from swagger_server.db.checkout import format_borrower

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
        pool = self.pool
        while not pool.sleep(TICK):  # True once close() has begun: the loop ends
            try:
                self.run_once()
            except Exception:  # the maintenance loop must outlive any single bad pass
                logger.exception("pool %r: maintenance failed", pool.name)

    def run_once(self) -> None:
        pool = self.pool
        threshold = pool.settings.leak_threshold
        now = time.monotonic()
        for checkout in pool.maintain(now):
            stack = format_borrower(checkout.frame) if checkout.frame else "(no stack)\n"
            logger.warning(
                "pool %r: connection held for %.1f s by thread %s (leak threshold %.1f s); taken at (innermost first):\n%s",
                pool.name,
                now - checkout.since,
                checkout.thread,
                threshold,
                stack.rstrip(),
            )
