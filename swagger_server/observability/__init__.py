"""What an operator sees: Prometheus metrics, one log line per request, and X-Request-ID.

- `metrics`: the metric definitions, one `Metrics` (and registry) per app, aggregated across workers;
- `sampling`: gauges copied off the request path (pool statistics, handler queue, event-loop lag);
- `logs`: the access log, written by a thread so the event loop never waits on stdout;
- `middleware`: the outermost ASGI layer that ties them to each request and serves GET /metrics;
- `tracing`: OpenTelemetry spans (server, pool wait, each statement), from the OTEL_* variables.
"""

from swagger_server.observability.logs import flush_access_log, guard_process_logs, setup_access_log
from swagger_server.observability.metrics import Metrics
from swagger_server.observability.middleware import (
    Observability,
    record_pool_wait,
    refusal_recorder,
    request_context,
)
from swagger_server.observability.sampling import LoopLag, PoolMetrics, ProcessSampler
from swagger_server.observability.tracing import Tracing, TracingError

__all__ = [
    "LoopLag",
    "Metrics",
    "Observability",
    "PoolMetrics",
    "ProcessSampler",
    "Tracing",
    "TracingError",
    "flush_access_log",
    "record_pool_wait",
    "refusal_recorder",
    "request_context",
    "guard_process_logs",
    "setup_access_log",
]
