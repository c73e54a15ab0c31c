"""The dashboard's roller: keeps the rollups (schema 013, queries/rollups.py) close behind the orders.

One pass is two short transactions on the primary (Citus's "incremental rollup" design):
1. wait for the orders table's writers in flight (a SHARE lock, under a short `lock_timeout`, given
   back by the commit right after it): every order id up to the sequence's value then is committed
   or rolled back, so none is skipped by a rollup that runs past it;
2. under a transaction-level advisory lock (one roller in the fleet at a time), add the next `batch`
   of orders to the rollups, recompute the days an UPDATE or DELETE made dirty, move the watermark.

An order's own transaction writes no rollup row: no hot row, and POST /api/orders pays nothing but a
statement-level trigger that finds nothing to do. Reports read the rollups plus the raw rows past the
watermark in one snapshot, so they are exact whether the roller is behind or not; the roller only
keeps what they read from the raw rows small. A store upgraded to schema 013 has empty rollups: the
roller fills them `batch` orders a pass while the service serves (`db rollup` does it at once).

`Roller` runs passes in a thread of each worker process, on a connection borrowed from the pool for
the pass only (a pass of 20 000 orders, under the pool's statement timeout); the advisory lock makes
every worker but one find nothing to do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2
import psycopg2.errors

from swagger_server.db.queries import rollups

logger = logging.getLogger(__name__)

BEHIND = 0.05  # seconds between passes while a pass still finds a full batch


@dataclass(frozen=True)
class Pass:
    """What one pass did: the order ids it rolled up, (first, last], and the dirty days it redid."""

    first: int
    last: int
    dirty_days: int

    @property
    def orders(self) -> int:
        return self.last - self.first


def roll_once(conn, batch: int = 100_000, lock_timeout_ms: int = 200) -> Pass | None:
    """One pass on `conn` (a primary connection, idle, autocommit or not); None when another roller
    holds the lock or the writers in flight did not finish within `lock_timeout_ms` (try later)."""
    try:
        with conn:  # transaction 1: the writers in flight finish; the SHARE lock ends with it
            safe = rollups.complete_up_to(conn, lock_timeout_ms)
    except psycopg2.errors.LockNotAvailable:
        return None
    with conn:  # transaction 2: the rollup itself, READ COMMITTED, under the advisory lock
        done = rollups.roll_up(conn, safe, batch)
    return None if done is None else Pass(*done)


def catch_up(conn, batch: int = 100_000, say: Callable[[str], None] = logger.info) -> int:
    """Passes until the rollups hold every order committed when it began; the orders rolled up."""
    total = 0
    while True:
        done = roll_once(conn, batch, lock_timeout_ms=5000)
        if done is None:
            say("another roller holds the lock, or writers kept the orders table for 5 s: trying again")
            continue
        total += done.orders
        if done.orders:
            say(f"rolled up orders {done.first + 1}..{done.last} ({done.dirty_days} dirty day(s) redone)")
        if done.orders < batch:
            return total


class Roller:
    """A pass every `interval` seconds in a daemon thread, on a connection borrowed from `pool`."""

    def __init__(self, pool, interval: float, batch: int = 20_000):
        self.pool = pool
        self.interval = interval
        self.batch = batch
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rollups-{pool.name}")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        wait = self.interval
        while not self.pool.sleep(wait):  # True once the pool's close() has begun
            wait = self.interval
            try:
                done = self.run_once()
            except Exception:  # a bad pass (the database down, a restart) must not end the loop
                logger.warning("rollup pass failed; next in %.0f s", self.interval, exc_info=True)
                continue
            if done is not None and done.orders >= self.batch:
                wait = BEHIND  # a full batch: more are waiting (a store upgraded to the rollups)

    def run_once(self) -> Pass | None:
        conn = self.pool.getconn(timeout=self.interval)
        try:
            done = roll_once(conn, self.batch)
        finally:
            self.pool.putconn(conn)
        if done is not None and (done.orders or done.dirty_days):
            logger.debug("rolled up %d orders, redid %d dirty days", done.orders, done.dirty_days)
        return done
