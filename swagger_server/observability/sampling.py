"""Gauges sampled off the request path: the pool's statistics, the handler queue, the event-loop lag.

Pool gauges and counters are copied from each worker's pool statistics by a small thread once a
second (and by the worker answering a scrape, for itself), never on the request path. The pool
wait-time histogram is observed on the request path (observability.middleware.record_pool_wait).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from swagger_server.db.pool_types import EVENTS
from swagger_server.observability.metrics import Metrics

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0


class PoolMetrics:
    """Copies one process's pool statistics into an app's metrics, once a second, in a thread of
    its own. One per app and process: `for_process` makes a new one after a fork."""

    def __init__(self, metrics: Metrics, database):
        self.metrics = metrics
        self.database = database
        self.pid = os.getpid()
        self._last: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.handlers = None  # HandlerThreads, set by the app's lifespan (busy / waiting gauges)
        self.loop_lag: LoopLag | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="pool-metrics")

    def start(self) -> PoolMetrics:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def sync(self) -> None:
        m = self.metrics
        handlers, lag = self.handlers, self.loop_lag
        if handlers is not None:
            m.handler_busy.set(handlers.busy)
            m.handler_queue.set(handlers.waiting)
        if lag is not None:
            m.loop_lag.set(lag.take())
        db = self.database
        pools = db.pools()
        if not pools:
            return
        with self._lock:
            for pool in pools:
                stats = pool.stats()
                for state in ("size", "idle", "in_use", "waiting", "max"):
                    m.pool_connections.labels(pool.name, state).set(stats[state])
                m.database_up.labels(pool.name).set(1 if stats["database_up"] else 0)
                for event in EVENTS:
                    self._add(m.pool_events.labels(pool.name, event), (pool.name, event), stats[event])
                self._otel(pool, stats)
            replica = db.replica
            if replica is not None:
                state = replica.stats()
                if state["lag_s"] is not None:
                    m.replica_lag.set(state["lag_s"])
                self._add(m.replica_reads.labels("replica", ""), ("replica", ""), state["replica_reads"])
                for reason, n in state["fallbacks"].items():
                    self._add(m.replica_reads.labels("primary", reason), ("primary", reason), n)

    def _otel(self, pool, stats) -> None:
        """The same statistics under OpenTelemetry's db.client.connection.* names, and the pool's
        timings since the last copy (opening and holding connections) into the histograms."""
        m, name = self.metrics, pool.name
        m.otel_count.labels(name, "idle").set(stats["idle"])
        m.otel_count.labels(name, "used").set(stats["in_use"])
        for key, value in (
            ("idle_max", stats["max"]),
            ("idle_min", stats["min"]),
            ("max", stats["max"]),
            ("pending_requests", stats["waiting"]),
        ):
            m.otel_limits[key].labels(name).set(value)
        self._add(m.otel_timeouts.labels(name), ("otel-timeouts", name), stats["timeouts"])
        for kind, seconds in pool.drain_timings():
            m.otel_times[kind].labels(name).observe(seconds)

    def _add(self, counter, key: tuple, total: int) -> None:
        delta = total - self._last.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[key] = total

    def _run(self) -> None:
        while not self._stop.wait(SYNC_INTERVAL):
            try:
                self.sync()
            except Exception:  # a metrics hiccup must never stop the copying
                logger.exception("pool metrics sync failed")


class ProcessSampler:
    """An app's PoolMetrics for the current process: made and started on first use after a fork
    (the parent's thread did not survive it)."""

    def __init__(self, metrics: Metrics, database):
        self.metrics = metrics
        self.database = database
        self._current: PoolMetrics | None = None
        self._lock = threading.Lock()

    def get(self) -> PoolMetrics:
        current = self._current
        if current is None or current.pid != os.getpid():
            with self._lock:
                current = self._current
                if current is None or current.pid != os.getpid():
                    current = self._current = PoolMetrics(self.metrics, self.database).start()
                    self.metrics.worker_starts.inc()
        return current

    def stop(self) -> None:
        if self._current is not None:
            self._current.stop()


class LoopLag:
    """Event-loop lag: a timer every INTERVAL on the loop, and how late it fired. `take()` gives the
    worst since the last call (PoolMetrics copies it into the gauge once a second)."""

    INTERVAL = 0.05

    def __init__(self):
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            late = loop.time() - due
            if late > self.worst:
                self.worst = late

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return max(0.0, worst)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
