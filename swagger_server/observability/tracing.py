"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables, off by default.

`OTEL_TRACES_EXPORTER` = `otlp` (OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT`, default
http://localhost:4318) | `console` (JSON on stdout) | `none` (the default here: tracing off, no cost).
The SDK reads the rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
and `_ARG` (parentbased_always_on unless told), `OTEL_PROPAGATORS` (W3C tracecontext and baggage),
`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`, `OTEL_SDK_DISABLED`.

Each app has its own TracerProvider (not the process-global one), made per process: after gunicorn's
fork, in the worker, since the exporter's thread does not survive a fork. Spans:

- a SERVER span per request (the outermost middleware): `GET /api/customers/{customer_id}` (the route
  template, never the raw path), continuing the caller's `traceparent`, with the status, the request
  id, and ERROR for a 5xx;
- `db.client.connection.wait` around the pool checkout (the request's connection);
- one CLIENT span per statement (db/connection.py), database semantic conventions, the statement's text
  with its placeholders and never a parameter's value; a failed statement records its SQLSTATE.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

EXPORTERS = ("otlp", "console", "none")
INSTRUMENTATION = "store_api"


class TracingError(ValueError):
    """An OTEL_* setting this service cannot honour (one line, naming the variable)."""


def exporter_name(environ: Mapping[str, str]) -> str:
    """`otlp`, `console` or `none` from OTEL_TRACES_EXPORTER (unset: none; OTEL_SDK_DISABLED: none)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    name = environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() or "none"
    if name not in EXPORTERS:
        raise TracingError(f"OTEL_TRACES_EXPORTER (environment): expected one of {', '.join(EXPORTERS)}, got {name!r}")
    return name


class Tracing:
    """One app's tracing: `enabled`, and per process a tracer (`tracer()`), flushed by `shutdown()`."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = dict(os.environ if environ is None else environ)
        self.exporter = exporter_name(self.environ)
        self.enabled = self.exporter != "none"
        self._pid = 0
        self._provider = None
        self._tracer = None
        self._lock = threading.Lock()

    def tracer(self):
        """This process's tracer (None when tracing is off), made on first use after a fork."""
        if not self.enabled:
            return None
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
        return self._tracer

    def _start(self) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if self.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            # One span per line (the SDK's default is indented JSON over many lines).
            exporter = ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
        # The sampler comes from OTEL_TRACES_SAMPLER / _ARG; the service name from OTEL_SERVICE_NAME.
        resource = Resource.create({"service.name": self.environ.get("OTEL_SERVICE_NAME", "store-api")})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        self._pid = os.getpid()

    def shutdown(self) -> None:
        """Export what is queued (the app's lifespan shutdown)."""
        provider = self._provider
        if provider is not None and self._pid == os.getpid():
            provider.shutdown()


class _HeaderGetter:
    """The W3C propagators' view of an ASGI scope's headers (bytes, lower-case names)."""

    def get(self, carrier, key: str):
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier):
        return [name.decode("latin-1") for name, _ in carrier]


HEADERS = _HeaderGetter()


def server_span(tracer, scope, request_id: str):
    """Start the request's SERVER span, continuing the caller's traceparent; (span, context token)."""
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(scope.get("headers", []), getter=HEADERS)
    method = scope["method"]
    span = tracer.start_span(
        method,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            "client.address": (scope.get("client") or ("",))[0],
            "store_api.request_id": request_id,
        },
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span, token, method: str, route: str | None, status: int) -> None:
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))
    span.end()
    context.detach(token)


def recording() -> bool:
    """Whether the current span records (this request is sampled): its children are worth making."""
    from opentelemetry import trace

    return trace.get_current_span().is_recording()


def trace_id(span) -> str:
    """The span's trace id as 32 hex digits (what the access log carries)."""
    return format(span.get_span_context().trace_id, "032x")
