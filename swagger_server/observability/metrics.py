"""The app's Prometheus metrics: one `Metrics` per app, each with its own registry.

Metrics are aggregated across gunicorn workers with prometheus_client's multiprocess mode: each
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it up, and
removes a dead worker's live gauges), and whichever worker answers GET /metrics reads them all.
Without that variable (tests, a single process) the app's own registry is served, so two apps in
one process count separately.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from swagger_server.db.pool_types import EVENTS
from swagger_server.problems import PROBLEM_KINDS

# Metric labels take the method only from this set (anything else is "other"): a client cannot make
# new time series by sending made-up methods.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class Metrics:
    """Every metric the service exports, registered in a registry of this app's own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Labelled children, looked up once (record_request, record_pool_wait).
        self._request_children: dict[tuple, tuple] = {}
        self._wait_children: dict[str, tuple] = {}
        self._problem_children: dict[tuple, object] = {}
        self.requests = Counter(
            "store_api_requests",
            "HTTP requests answered, by operation and status.",
            ["operation", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "store_api_request_duration_seconds",
            "Time to answer a request, by operation.",
            ["operation"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.pool_connections = Gauge(
            "store_api_pool_connections",
            "Pool connections by state (size = idle + in_use), summed over live workers.",
            ["pool", "state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pool_wait = Histogram(
            "store_api_pool_wait_seconds",
            "Time a request waited for a database connection.",
            ["pool"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.pool_events = Counter(
            "store_api_pool_events",
            "Pool events (the pool's own counters): " + ", ".join(EVENTS) + ".",
            ["pool", "event"],
            registry=r,
        )
        self.replica_lag = Gauge(
            "store_api_replica_lag_seconds",
            "Replica replay lag at the last check (the largest any live worker saw).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.database_up = Gauge(
            "store_api_database_up",
            "1 while the pool reaches its database, 0 while it cannot (the lowest any live worker says).",
            ["pool"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.worker_starts = Counter(
            "store_api_worker_starts",
            "Processes that started serving (each gunicorn worker once): a rise after start-up is a restart.",
            registry=r,
        )
        self.rate_limiter_degraded = Gauge(
            "store_api_rate_limiter_degraded",
            "1 while the rate limit's storage (Redis) fails and requests pass unlimited (any live worker).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.rate_limiter_unlimited = Counter(
            "store_api_rate_limiter_unlimited",
            "Requests let through without a limit because the rate limit's storage failed (fail open).",
            registry=r,
        )
        self.handler_busy = Gauge(
            "store_api_handler_busy",
            "Requests in a handler thread (at most [GUNICORN] threads per worker), sampled each second, "
            "summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.handler_queue = Gauge(
            "store_api_handler_queue",
            "Requests waiting for a handler thread (each waits at most [API] admission_timeout, then 503), "
            "sampled each second, summed over live workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.loop_lag = Gauge(
            "store_api_event_loop_lag_seconds",
            "The longest a timer on the event loop fired late in the last second: how long any request "
            "could have waited for the loop (the worst live worker).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.problems = Counter(
            "store_api_problems",
            "Problem answers (problem+json) by operation and kind, the end of the problem's type: overloaded,"
            " statement-timeout, schema-behind, pool-exhausted, database-unavailable, rate-limited,"
            " too-many-concurrent, bad-request, ... (problems.PROBLEM_KINDS; anything else: other).",
            ["operation", "kind"],
            registry=r,
        )
        self.statement_timeouts = Counter(
            "store_api_statement_timeouts",
            "Requests the database cancelled at their statement timeout (503 statement-timeout), by operation.",
            ["operation"],
            registry=r,
        )
        self.access_log_dropped = Counter(
            "store_api_access_log_dropped", "Access log lines dropped because stdout could not keep up.", registry=r
        )
        self.replica_reads = Counter(
            "store_api_replica_routed_reads",
            "Read-only requests by where they were served and, for the primary, why.",
            ["destination", "reason"],
            registry=r,
        )

        # The pool under OpenTelemetry's semantic-convention names (db.client.connection.*), as
        # Prometheus spells them: dots are underscores, seconds have their unit, counters end _total.
        pool_name = "db_client_connection_pool_name"
        self.otel_count = Gauge(
            "db_client_connection_count",
            "db.client.connection.count: connections by state (idle, used), summed over live workers.",
            [pool_name, "db_client_connection_state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.otel_limits = {
            key: Gauge(
                f"db_client_connection_{key}",
                f"db.client.connection.{key.replace('_', '.')}: {meaning}, summed over live workers.",
                [pool_name],
                multiprocess_mode="livesum",
                registry=r,
            )
            for key, meaning in (
                ("idle_max", "the most idle connections allowed"),
                ("idle_min", "the fewest idle connections kept"),
                ("max", "the most open connections allowed"),
                ("pending_requests", "requests waiting for a connection"),
            )
        }
        self.otel_timeouts = Counter(
            "db_client_connection_timeouts",
            "db.client.connection.timeouts: checkouts that timed out waiting for a connection.",
            [pool_name],
            registry=r,
        )
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.otel_times = {
            key: Histogram(
                f"db_client_connection_{key}_time_seconds",
                f"db.client.connection.{key}_time: {meaning}.",
                [pool_name],
                buckets=buckets,
                registry=r,
            )
            for key, meaning in (
                ("create", "time to open a connection"),
                ("wait", "time a request waited for a connection"),
                ("use", "time a connection was held, checkout to return"),
            )
        }

    def record_request(
        self, operation: str, method: str, status: int, seconds: float | None, kind: str | None = None
    ) -> None:
        # The labelled children, looked up once per (operation, method, status): `labels()` validates
        # and locks on every call. Operations come from the spec, methods from METHODS, statuses from
        # what the service answers: the cache stays as small as the series themselves.
        key = (operation, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(operation, method if method in METHODS else "other", str(status)),
                self.latency.labels(operation),
            )
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)
        if kind is not None:
            self.record_problem(operation, kind)

    def record_problem(self, operation: str, kind: str) -> None:
        key = (operation, kind)
        child = self._problem_children.get(key)
        if child is None:
            child = self._problem_children[key] = self.problems.labels(
                operation, kind if kind in PROBLEM_KINDS else "other"
            )
        child.inc()

    def record_pool_wait(self, pool: str, seconds: float) -> None:
        """A checkout's wait, in both histograms (ours and OpenTelemetry's name), children cached."""
        children = self._wait_children.get(pool)
        if children is None:
            children = self._wait_children[pool] = (self.pool_wait.labels(pool), self.otel_times["wait"].labels(pool))
        children[0].observe(seconds)
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition: all workers' values in multiprocess mode, else this app's."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            registry.register(WorkerFiles(directory))
            return generate_latest(registry)
        return generate_latest(self.registry)


class WorkerFiles:
    """prometheus_client's multiprocess collector over the workers' files that have a header.

    A worker creates a file and only then sizes it (`MmapedDict`): a scrape in between read a 0-byte
    file, raised `struct.error` and answered 500 for every metric, and a worker killed in that window
    left the file for good, so every scrape failed until a restart (prometheus/client_python#1199,
    open). A file shorter than its 8-byte header holds no value yet and is left out; its worker's
    values are read by the next scrape. A live gauge's file removed by child_exit after the listing
    is skipped by prometheus_client itself."""

    HEADER = 8

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self):
        files = []
        for path in glob.glob(os.path.join(self.directory, "*.db")):
            try:
                if os.stat(path).st_size >= self.HEADER:
                    files.append(path)
            except FileNotFoundError:  # a dead worker's live gauge, removed since the listing
                continue
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
