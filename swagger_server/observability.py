"""What an operator sees: Prometheus metrics, one JSON log line per request, and X-Request-ID.

Metrics are aggregated across gunicorn workers with prometheus_client's multiprocess mode: each
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it up, and
removes a dead worker's live gauges), and whichever worker answers GET /metrics reads them all.
Without that variable (tests, a single process) the process's own registry is served.

Pool gauges and counters are copied from each worker's pool statistics by a small thread once a
second (and by the worker answering a scrape, for itself), never on the request path. The pool
wait-time histogram is observed on the request path: the time a request spent in `getconn()`.

The ASGI middleware here is the outermost layer: it sees every answer, including the 503s of
admission control and the problem responses rendered by Connexion, and serves /metrics itself, so a
scrape works even when every handler thread is busy.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import queue
import re
import select
import sys
import threading
import time
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from swagger_server.db.pool import EVENTS
from swagger_server.errors import excerpt, send_problem

REQUEST_ID_HEADER = "X-Request-ID"
# Metric labels take the method only from this set (anything else is "other"): a client cannot make
# new time series by sending made-up methods.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
SYNC_INTERVAL = 1.0

REQUESTS = Counter(
    "store_api_requests", "HTTP requests answered, by operation and status.", ["operation", "method", "status"]
)
LATENCY = Histogram(
    "store_api_request_duration_seconds",
    "Time to answer a request, by operation.",
    ["operation"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_CONNECTIONS = Gauge(
    "store_api_pool_connections",
    "Pool connections by state (size = idle + in_use), summed over live workers.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
POOL_WAIT = Histogram(
    "store_api_pool_wait_seconds",
    "Time a request waited for a database connection.",
    ["pool"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POOL_EVENTS = Counter(
    "store_api_pool_events", "Pool events (the pool's own counters): " + ", ".join(EVENTS) + ".", ["pool", "event"]
)
REPLICA_LAG = Gauge(
    "store_api_replica_lag_seconds",
    "Replica replay lag at the last check (the largest any live worker saw).",
    multiprocess_mode="livemax",
)
HANDLER_BUSY = Gauge(
    "store_api_handler_busy",
    "Requests in a handler thread (at most [GUNICORN] threads per worker), sampled each second, summed "
    "over live workers.",
    multiprocess_mode="livesum",
)
HANDLER_QUEUE = Gauge(
    "store_api_handler_queue",
    "Requests waiting for a handler thread (each waits at most the pool timeout, then 503), sampled "
    "each second, summed over live workers.",
    multiprocess_mode="livesum",
)
LOOP_LAG = Gauge(
    "store_api_event_loop_lag_seconds",
    "The longest a timer on the event loop fired late in the last second: how long any request could "
    "have waited for the loop (the worst live worker).",
    multiprocess_mode="livemax",
)
ACCESS_LOG_DROPPED = Counter(
    "store_api_access_log_dropped", "Access log lines dropped because stdout could not keep up."
)
REPLICA_READS = Counter(
    "store_api_replica_routed_reads",
    "Read-only requests by where they were served and, for the primary, why.",
    ["destination", "reason"],
)


access_log = logging.getLogger("store_api.access")


# -- pool statistics -> metrics ------------------------------------------------------------------------
class PoolMetrics:
    """Copies one process's pool statistics into the metrics. One per process (pid-checked)."""

    def __init__(self, database):
        self.database = database
        self.pid = os.getpid()
        self._last: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self.handlers = None  # HandlerThreads, set by the app's lifespan (busy / waiting gauges)
        self.loop_lag: LoopLag | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="pool-metrics")

    def start(self) -> PoolMetrics:
        self._thread.start()
        return self

    def sync(self) -> None:
        handlers, lag = self.handlers, self.loop_lag
        if handlers is not None:
            HANDLER_BUSY.set(handlers.busy)
            HANDLER_QUEUE.set(handlers.waiting)
        if lag is not None:
            LOOP_LAG.set(lag.take())
        db = self.database
        pools = db.pools()
        if not pools:
            return
        with self._lock:
            for pool in pools:
                stats = pool.stats()
                for state in ("size", "idle", "in_use", "waiting", "max"):
                    POOL_CONNECTIONS.labels(pool.name, state).set(stats[state])
                for event in EVENTS:
                    self._add(POOL_EVENTS.labels(pool.name, event), (pool.name, event), stats[event])
            replica = db.replica
            if replica is not None:
                state = replica.stats()
                if state["lag_s"] is not None:
                    REPLICA_LAG.set(state["lag_s"])
                self._add(REPLICA_READS.labels("replica", ""), ("replica", ""), state["replica_reads"])
                for reason, n in state["fallbacks"].items():
                    self._add(REPLICA_READS.labels("primary", reason), ("primary", reason), n)

    def _add(self, counter, key: tuple, total: int) -> None:
        delta = total - self._last.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[key] = total

    def _run(self) -> None:
        while _pool_metrics is self:  # superseded (a new app in this process): stop
            time.sleep(SYNC_INTERVAL)
            try:
                self.sync()
            except Exception:  # a metrics hiccup must never stop the copying
                logging.getLogger(__name__).exception("pool metrics sync failed")


_pool_metrics: PoolMetrics | None = None
_pool_metrics_lock = threading.Lock()


def pool_metrics(database) -> PoolMetrics:
    """This process's PoolMetrics, started on first use (after gunicorn's fork)."""
    global _pool_metrics
    current = _pool_metrics
    if current is None or current.pid != os.getpid() or current.database is not database:
        with _pool_metrics_lock:
            current = _pool_metrics
            if current is None or current.pid != os.getpid() or current.database is not database:
                current = _pool_metrics = PoolMetrics(database)
                current.start()  # after the assignment: the thread runs while it is current
    return current


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


def render_metrics(database) -> bytes:
    """The Prometheus text exposition: all workers' values in multiprocess mode, else this process's."""
    pool_metrics(database).sync()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


# -- logs ----------------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """One short line per request, for a person at a terminal (`make run`); coloured by status on a tty."""

    COLOURS = {2: "\033[32m", 3: "\033[36m", 4: "\033[33m", 5: "\033[31m"}

    def __init__(self, colour: bool):
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        f = getattr(record, "fields", {})
        if "status" not in f:
            return f"{record.levelname.lower()} {record.getMessage()}"
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        status = str(f["status"])
        if self.colour:
            status = f"{self.COLOURS.get(f['status'] // 100, '')}{status}\033[0m"
        wait = f" (waited {f['pool_wait_ms']} ms)" if f.get("pool_wait_ms") and f["pool_wait_ms"] >= 1 else ""
        return f"{when} {f['method']:<6} {f['path']} {status} {f['duration_ms']:.1f} ms{wait}"


class BackgroundStreamHandler(logging.Handler):
    """A log handler that never makes its caller (the event loop) wait on the stream.

    Records go on a queue; a writer thread wakes every FLUSH_INTERVAL, formats what has queued up and
    writes it in as few calls as PIPE_BUF allows (below). A stdout that blocks (a slow pipe to a log collector) then stalls only the
    writer. The queue is bounded: past MAX_QUEUED lines, new ones are dropped and counted
    (store_api_access_log_dropped), so a stuck stdout cannot grow the worker's memory. Each write is
    whole lines of at most PIPE_BUF bytes, so lines of workers sharing one pipe never interleave."""

    FLUSH_INTERVAL = 0.02
    MAX_QUEUED = 10_000
    PIPE_BUF = select.PIPE_BUF  # 4096 on Linux: the largest write to a pipe that stays whole

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = 0
        self._start_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():
            self._start()
        if self._queue.qsize() >= self.MAX_QUEUED:
            ACCESS_LOG_DROPPED.inc()
            return
        self._queue.put(record)

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()  # a parent's queue (and its thread) stayed behind in the fork
            threading.Thread(target=self._run, args=(self._queue,), name="access-log", daemon=True).start()
            self._pid = os.getpid()

    def _run(self, records: queue.SimpleQueue) -> None:
        while True:
            time.sleep(self.FLUSH_INTERVAL)
            self._drain(records)

    def _drain(self, records: queue.SimpleQueue) -> None:
        lines = []
        while True:
            try:
                record = records.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        # Several workers share one stdout pipe, and a write to a pipe is whole only up to PIPE_BUF
        # bytes: each write here is at most that, and whole lines, so two workers' lines never mix.
        chunk: list[str] = []
        size = 0
        for line in lines:
            length = len(line.encode("utf-8", "replace")) + 1
            if chunk and size + length > self.PIPE_BUF:
                self._write(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            self._write(chunk)

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:
            pass  # stdout gone (the worker is exiting): nothing to write to

    def flush(self) -> None:
        """Write what is queued now, on the caller's thread (shutdown, tests)."""
        if self._pid == os.getpid():
            self._drain(self._queue)


def flush_access_log() -> None:
    """Write out the access log lines still queued (the app's lifespan shutdown)."""
    for handler in access_log.handlers:
        handler.flush()


def setup_access_log(enabled: bool, log_format: str = "json") -> None:
    """Send the access log to stdout (once per process): JSON lines, or short text lines for a person."""
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    for handler in [h for h in access_log.handlers if getattr(h, "store_api", False)]:
        access_log.removeHandler(handler)
    handler = BackgroundStreamHandler(sys.stdout)
    handler.setFormatter(TextFormatter(sys.stdout.isatty()) if log_format == "text" else JsonFormatter())
    handler.store_api = True
    access_log.addHandler(handler)


# -- the middleware ------------------------------------------------------------------------------------
def request_context(environ) -> dict:
    """The per-request dict shared with the middleware (from a Flask handler: `request.environ`)."""
    scope = environ.get("asgi.scope") or {}
    return scope.get("extensions", {}).get("store_api", {})


class Observability:
    """Outermost ASGI middleware: request id, metrics, the access log line, and GET /metrics."""

    def __init__(self, app, database, metrics_token: str = "", metrics_port: int = 0):
        self.app = app
        self.database = database
        self.metrics_token = ("bearer " + metrics_token).encode() if metrics_token else b""
        self.metrics_port = metrics_port

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.metrics_port:
            on_metrics_port = (scope.get("server") or ("", 0))[1] == self.metrics_port
            if on_metrics_port or scope["path"] == "/metrics":
                # The metrics port serves /metrics and nothing else; the API port never serves it.
                if on_metrics_port and scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
                    await self._serve_metrics(scope, send)
                else:
                    await send_problem(send, 404, "no such resource")
                return
        elif scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await self._serve_metrics(scope, send)
            return
        pool_metrics(self.database)
        start = time.perf_counter()
        request_id = _request_id(scope)
        context = {"request_id": request_id}
        # Shared by reference with inner layers: Connexion's router fills in the operation id, and the
        # Flask handler the pool wait (see request_context).
        scope.setdefault("extensions", {})["store_api"] = context
        # What the client received: the status sent, or (when nothing was sent) 499 for a client that
        # went away first (nginx's "client closed request"), 500 only when an error escaped (below).
        status = 499
        recorded = False
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        def record() -> None:
            nonlocal recorded, status
            if recorded:
                return
            recorded = True
            status = scope.get("store_api_refused", status)  # answered by the HTTP layer (server.py)
            elapsed = time.perf_counter() - start
            routing = scope["extensions"].get("connexion_routing", {})
            operation = (routing.get("operation_id") or "").rsplit(".", 1)[-1] or "none"
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(operation, method, str(status)).inc()
            LATENCY.labels(operation).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                fields = {
                    "request_id": request_id,
                    "method": method,
                    "path": excerpt(scope["path"], 200),
                    # The peer, or behind a trusted proxy (FORWARDED_ALLOW_IPS) the client it names.
                    "client": (scope.get("client") or ("",))[0],
                    "operation": operation,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "pool_wait_ms": context.get("pool_wait_ms"),
                    "db": context.get("db"),
                    "pid": os.getpid(),
                }
                access_log.info("request", extra={"fields": fields})

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte leaves: a client that has its answer and then
                # scrapes /metrics finds its request there.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not recorded and status == 499:
                status = 500  # Starlette's ServerErrorMiddleware, outside, answers it
            raise
        finally:
            record()

    async def _serve_metrics(self, scope, send):
        if self.metrics_token:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given[:7].lower() + given[7:], self.metrics_token):
                await send_problem(
                    send,
                    401,
                    "GET /metrics needs the metrics bearer token",
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
                return
        body = render_metrics(self.database)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _request_id(scope) -> str:
    """The client's X-Request-ID when it is a sane token, otherwise a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return _new_request_id()


class _RequestIds:
    """Request ids: 32 hex digits, a random 64-bit prefix per process and a counter. Unique across
    workers and restarts without a system call per request (uuid4 reads os.urandom each time)."""

    def __init__(self):
        self._pid = 0

    def __call__(self) -> str:
        if self._pid != os.getpid():  # after a fork: a prefix of this process's own
            self._prefix = os.urandom(8).hex()
            self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
            self._pid = os.getpid()
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _RequestIds()


def record_refusal(status: int, client) -> None:
    """A request the HTTP layer refused before it reached the app (a head over a limit or too slow,
    malformed HTTP): counted and logged like any answer, so /metrics matches what clients received."""
    REQUESTS.labels("none", "other", str(status)).inc()
    if access_log.isEnabledFor(logging.INFO):
        fields = {
            "request_id": _new_request_id(),
            "method": "other",
            "path": "",
            "client": (client or ("",))[0],
            "operation": "none",
            "status": status,
            "duration_ms": 0.0,
            "pool_wait_ms": None,
            "db": None,
            "pid": os.getpid(),
        }
        access_log.info("request", extra={"fields": fields})


def record_pool_wait(environ, pool: str, seconds: float) -> None:
    """Called by the request's database access after a checkout: histogram and log field."""
    POOL_WAIT.labels(pool).observe(seconds)
    context = request_context(environ)
    context["pool_wait_ms"] = round(seconds * 1000, 3)
    context["db"] = pool
