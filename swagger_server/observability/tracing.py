"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables, off by default.

`OTEL_TRACES_EXPORTER` = `otlp` (OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT`, default
http://localhost:4318) | `console` (JSON on stdout) | `none` (the default here: tracing off, no cost).
The SDK reads the rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
and `_ARG` (parentbased_always_on unless told), `OTEL_PROPAGATORS` (W3C tracecontext and baggage),
`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`, `OTEL_SDK_DISABLED`.

Each app has its own TracerProvider (not the process-global one), made per process: after gunicorn's
fork, in the worker, since the exporter's thread does not survive a fork. Spans:

- a SERVER span per request (the outermost middleware): `GET /api/customers/{customer_id}` (the route
  template, never the raw path), with the status, the request id, and ERROR for a 5xx. It continues
  the caller's `traceparent` (and reads `tracestate`, `baggage`) only when the TCP peer is in `[API]
  trace_trusted_peers` (the proxy in front, or a network); anyone else's request starts a new trace,
  sampled by the configured sampler alone (a caller's sampled flag, or a trace id chosen to pass a
  ratio sampler, cannot force tracing), with a span link to the caller's context;
- `db.client.connection.wait` around the pool checkout (the request's connection);
- one CLIENT span per statement (db/connection.py), database semantic conventions, the statement's text
  with its placeholders and never a parameter's value; a failed statement records its SQLSTATE.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
from collections.abc import Mapping

EXPORTERS = ("otlp", "console", "none")
INSTRUMENTATION = "swagger_server"  # the instrumentation scope: the package that makes the spans


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


class _LazyTraceContext:
    """W3C traceparent alone (the SDK imported on first use, as everywhere in this module)."""

    _propagator = None

    def extract(self, carrier, getter):
        if self._propagator is None:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            type(self)._propagator = TraceContextTextMapPropagator()
        return self._propagator.extract(carrier, getter=getter)


_TRACE_CONTEXT = _LazyTraceContext()


class TrustedPeers:
    """`[API] trace_trusted_peers`: whether a request's TCP peer may continue its trace."""

    def __init__(self, networks=()):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._seen: dict[str, bool] = {}

    def __call__(self, scope) -> bool:
        if not self.networks:
            return False
        # The TCP peer (serving/protocol.py keeps it), not the client a forwarding header names.
        peer = (scope.get("store_api_peer") or scope.get("client") or ("",))[0]
        known = self._seen.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self.networks)
            if len(self._seen) < 4096:  # the peers are proxies and services: few
                self._seen[peer] = known
        return known


def server_span(tracer, scope, request_id: str, trusted: bool = False):
    """Start the request's SERVER span, continuing the caller's trace context when `trusted`, else in a
    new trace linked to it; (span, context token)."""
    from opentelemetry import context, propagate, trace

    headers = scope.get("headers", [])
    links = None
    if trusted:
        parent = propagate.extract(headers, getter=HEADERS)
    else:
        parent = context.Context()
        # Only traceparent is read (ids the propagator validates); tracestate and baggage are not.
        caller = _TRACE_CONTEXT.extract([h for h in headers if h[0] == b"traceparent"], getter=HEADERS)
        caller_span = trace.get_current_span(caller).get_span_context()
        if caller_span.is_valid:
            links = [trace.Link(caller_span, {"store_api.untrusted_parent": True})]
    method = scope["method"]
    span = tracer.start_span(
        method,
        context=parent,
        links=links,
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


def end_server_span(span, token, method: str, route: str | None, status: int, caller: str | None = None) -> None:
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    if caller:  # who asked (security.py's caller: never the token), OpenTelemetry's enduser.id
        span.set_attribute("enduser.id", caller)
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
