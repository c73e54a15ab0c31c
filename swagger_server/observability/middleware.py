"""The outermost ASGI middleware: the request id, the request's metrics and access-log line, and
GET /metrics. It sees every answer, including the 503s of admission control and the problem
responses rendered by Connexion, and serves /metrics itself, so a scrape works even when every handler
thread is busy.
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
import time

from prometheus_client import CONTENT_TYPE_LATEST

from swagger_server import problems, state
from swagger_server.errors import excerpt
from swagger_server.observability import tracing
from swagger_server.observability.logs import log_request
from swagger_server.observability.metrics import METHODS
from swagger_server.problems import PROBLEM

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_context(environ) -> dict:
    """The per-request dict shared with the middleware (from a Flask handler: `request.environ`)."""
    return state.peek_request_context(environ.get("asgi.scope"))


class Observability:
    """Outermost ASGI middleware: request id, metrics, the access log line, and GET /metrics."""

    def __init__(self, app, state):
        self.app = app
        self.state = state  # the app's AppState (swagger_server/state.py): metrics, database, settings
        self.metrics = state.metrics
        api = state.settings.api
        self.metrics_token = ("bearer " + api.metrics_token).encode() if api.metrics_token else b""
        self.metrics_port = api.metrics_port
        self.trusted_peers = tracing.TrustedPeers(api.trace_trusted_peers)

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
                    await problems.send(send, 404, "no such resource")
                return
        elif scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            await self._serve_metrics(scope, send)
            return
        self.state.sampler.get()
        start = time.perf_counter()
        request_id = _request_id(scope)
        context = {"request_id": request_id, "app": self.state}
        tracer = self.state.tracing.tracer()
        span = None
        if tracer is not None:  # tracing on (observability/tracing.py): the request's SERVER span
            span, span_token = tracing.server_span(tracer, scope, request_id, self.trusted_peers(scope))
            context["trace_id"] = tracing.trace_id(span)
        # Shared by reference with inner layers: Connexion's router fills in the operation id, and the
        # Flask handler the pool wait (see request_context).
        state.begin_request(scope, context)
        # What the client received: the status sent, or (when nothing was sent) 499 for a client that
        # went away first (nginx's "client closed request"), 500 only when an error escaped (below).
        status = 499
        problem: bytes | None = None  # b"" once a problem+json answer starts, then its kind
        recorded = False
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        def record() -> None:
            nonlocal recorded, status
            if recorded:
                return
            recorded = True
            status = scope.get("store_api_refused", status)  # answered by the HTTP layer (serving/protocol.py)
            elapsed = time.perf_counter() - start
            operation = state.operation(scope) or "none"
            method = scope["method"] if scope["method"] in METHODS else "other"
            kind = problem.decode() if problem else None
            self.metrics.record_request(operation, method, status, elapsed, kind)
            log_request(
                {
                    "request_id": request_id,
                    "method": method,
                    "path": excerpt(scope["path"], 200),
                    # The peer, or behind a trusted proxy (FORWARDED_ALLOW_IPS) the client it names.
                    "client": (scope.get("client") or ("",))[0],
                    "operation": operation,
                    # Who asked: `key:<id>`, `oidc:<sub>`, a configured token's digest (security.py); never a token.
                    "caller": state.caller(scope),
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "pool_wait_ms": context.get("pool_wait_ms"),
                    "db": context.get("db"),
                    "pid": os.getpid(),
                    **({"trace_id": context["trace_id"]} if "trace_id" in context else {}),
                }
            )

        async def send_with_id(message):
            nonlocal status, problem
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400 and (b"content-type", _PROBLEM_TYPE) in message.get("headers", ()):
                    problem = b""
            elif message["type"] == "http.response.body" and problem == b"":
                # Its kind, from the head of the body every problem starts with ("type" first).
                found = _PROBLEM_KIND.search(message.get("body", b"")[:200])
                problem = found.group(1) if found else b"other"
            if message["type"] == "http.response.start":
                extra = [header, *context.get("ratelimit", ())]  # the rate limit's fields (ratelimit.py)
                if self.state.deprecations:  # a deprecated operation says so on every answer (deprecation.py)
                    extra += self.state.deprecations.get(state.operation(scope), ())
                message = {**message, "headers": [*message.get("headers", []), *extra]}
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
            if span is not None:
                route = self.state.routes.template(state.operation(scope))
                tracing.end_server_span(span, span_token, scope["method"], route, status, state.caller(scope))

    async def _serve_metrics(self, scope, send):
        if self.metrics_token:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given[:7].lower() + given[7:], self.metrics_token):
                await problems.send(
                    send,
                    401,
                    "GET /metrics needs the metrics bearer token",
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
                return
        self.state.sampler.get().sync()
        body = self.metrics.render()
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


_PROBLEM_TYPE = PROBLEM.encode()
_PROBLEM_KIND = re.compile(rb'"type": ?"/api/problems/([a-z]+(?:-[a-z]+){0,4})"')


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


def refusal_recorder(metrics):
    """What the HTTP layer (swagger_server/serving/protocol.py) calls for a request it refused before it reached
    the app (a head over a limit or too slow, malformed HTTP): counted and logged like any answer, so
    /metrics matches what clients received."""

    def record_refusal(status: int, client) -> None:
        metrics.record_request("none", "other", status, None, problems.kind_of(status) if status >= 400 else None)
        log_request(
            {
                "request_id": _new_request_id(),
                "method": "other",
                "path": "",
                "client": (client or ("",))[0],
                "operation": "none",
                "caller": None,
                "status": status,
                "duration_ms": 0.0,
                "pool_wait_ms": None,
                "db": None,
                "pid": os.getpid(),
            }
        )

    return record_refusal


def record_pool_wait(environ, pool: str, seconds: float) -> None:
    """Called by the request's database access after a checkout: histogram and log field."""
    context = request_context(environ)
    state = context.get("app")
    if state is not None:
        state.metrics.record_pool_wait(pool, seconds)
    context["pool_wait_ms"] = round(seconds * 1000, 3)
    context["db"] = pool
