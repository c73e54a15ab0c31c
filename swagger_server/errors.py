"""Problem+json errors: the exceptions controllers raise, and the one place that renders every error.

Every error body has the same shape (RFC 9457): type, title, status, detail. 5xx bodies never carry
database or stack text; anything unexpected is logged once with its traceback.
"""

from __future__ import annotations

import json
import logging
import re

import psycopg2
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionResponse
from starlette.exceptions import HTTPException

from swagger_server.db.constraints import CHECKS, REFERENCES, TEXT_RULES, UNIQUE
from swagger_server.db.errors import (
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolTimeout,
    SchemaBehind,
    TooManyWaiters,
)
from swagger_server.state import peek_request_context
from swagger_server.text import first_line

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
PROBLEM_BASE = "/api/problems/"
# Every kind of problem the service answers with (the end of a problem's `type`): the bounded `kind`
# label of store_api_problems_total, so that a dashboard tells a statement timeout from an overload and
# a rate limit from a concurrency limit. tests/observability/test_problem_kinds.py fails on a kind the
# code uses that this set lacks; any other (none should exist) is counted as "other".
PROBLEM_KINDS = frozenset(
    {
        "bad-request",
        "conflict",
        "conflict-retry",
        "database-unavailable",
        "error",
        "forbidden",
        "headers-too-large",
        "insufficient-stock",
        "internal",
        "length-required",
        "method-not-allowed",
        "not-acceptable",
        "not-found",
        "not-implemented",
        "overloaded",
        "payload-too-large",
        "pool-exhausted",
        "precondition-failed",
        "precondition-required",
        "rate-limited",
        "redirect",
        "request-timeout",
        "schema-behind",
        "shutting-down",
        "statement-timeout",
        "too-many-concurrent",
        "unauthorized",
        "unavailable",
        "unprocessable",
        "unsupported-media-type",
        "uri-too-long",
    }
)


class ApiError(Exception):
    """An error the client can act on. Subclasses fix status, title and type."""

    status = 400
    title = "Bad Request"
    kind = "bad-request"

    def __init__(self, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class Unauthorized(ApiError):
    status, title, kind = 401, "Unauthorized", "unauthorized"


class Forbidden(ApiError):
    status, title, kind = 403, "Forbidden", "forbidden"


class NotFound(ApiError):
    status, title, kind = 404, "Not Found", "not-found"


class Conflict(ApiError):
    status, title, kind = 409, "Conflict", "conflict"


class InsufficientStock(Conflict):
    kind = "insufficient-stock"


class PayloadTooLarge(ApiError):
    status, title, kind = 413, "Content Too Large", "payload-too-large"


class UnprocessableEntity(ApiError):
    status, title, kind = 422, "Unprocessable Entity", "unprocessable"


# Problems rendered for Connexion's and Starlette's own errors (routing, security, media types):
# the same shape and type URIs as ours, by status.
_KINDS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    302: "redirect",
    308: "redirect",
    405: "method-not-allowed",
    406: "not-acceptable",
    408: "request-timeout",
    411: "length-required",
    413: "payload-too-large",
    414: "uri-too-long",
    415: "unsupported-media-type",
    422: "unprocessable",
    431: "headers-too-large",
    500: "internal",
    501: "not-implemented",
    503: "unavailable",
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    302: "Found",
    308: "Permanent Redirect",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

# No error body or log line carries more than this much of anything a client sent.
EXCERPT = 120


def excerpt(value, limit: int = EXCERPT) -> str:
    """A short, printable excerpt of client input: repr-escaped, cut at `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def problem(status: int, title: str, detail: str, kind: str, headers: dict | None = None, **extra) -> ConnexionResponse:
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail, **extra}
    return ConnexionResponse(
        status_code=status, content_type=PROBLEM, headers=headers or {}, body=json.dumps(body, separators=(",", ":"))
    )


def problem_bytes(
    status: int, detail: str, headers: dict | None = None, field: str | None = None, kind: str | None = None
) -> tuple[list, bytes]:
    """The same problem as raw ASGI headers and body, for layers that answer before Connexion does."""
    document = {
        "type": PROBLEM_BASE + (kind or _KINDS.get(status, "error")),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        document["field"] = field
    body = json.dumps(document, separators=(",", ":")).encode()
    raw = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return raw, body


async def send_problem(send, status: int, detail: str, headers: dict | None = None, field: str | None = None) -> None:
    """Answer with that problem on a raw ASGI `send` (middleware that answers before Connexion)."""
    raw, body = problem_bytes(status, detail, headers, field)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def api_error(_request, exc: ApiError) -> ConnexionResponse:
    return problem(exc.status, exc.title, exc.detail, exc.kind, headers=exc.headers, **exc.extra)


async def framework_problem(request, exc) -> ConnexionResponse:
    """Connexion's problems (validation, security, media type) and Starlette's HTTP errors (routing),
    in our shape. Their detail may quote client input (an unknown parameter's name), so it is cut."""
    status = getattr(exc, "status_code", 500)
    detail = excerpt(str(getattr(exc, "detail", "") or _TITLES.get(status, "Error")), 300)
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="store-api"'
    if status == 405:
        state = _app(request)
        routes = state.routes if state is not None else None
        headers["Allow"] = ", ".join(routes.allowed_methods(request.scope.get("path", "")) if routes else ())
    if status == 404:
        detail = "no such resource: " + excerpt(request.scope.get("path", ""), 80)
    if status >= 500:
        logger.error("%d %s: %s", status, type(exc).__name__, detail)
    else:
        logger.debug("%d %s: %s", status, type(exc).__name__, detail)
    return problem(status, _TITLES.get(status, "Error"), detail, _KINDS.get(status, "error"), headers=headers)


class Routes:
    """One app's path templates -> methods, so that a 405's Allow header lists the path's real ones."""

    def __init__(self, spec_paths: dict, base_path: str):
        self._routes: list[tuple[re.Pattern, tuple[str, ...]]] = []
        # operationId -> its path template (a span's name is the template, never the raw path)
        self._templates = {
            operation["operationId"]: base_path + template
            for template, item in spec_paths.items()
            for operation in item.values()
            if isinstance(operation, dict) and "operationId" in operation
        }
        for template, item in spec_paths.items():
            pattern = re.escape(base_path + template)
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
            methods = sorted(m.upper() for m in item if m in ("get", "put", "post", "patch", "delete"))
            self._routes.append((re.compile(f"^{pattern}$"), tuple(methods)))

    def template(self, operation_id: str) -> str | None:
        return self._templates.get(operation_id)

    def allowed_methods(self, path: str) -> tuple[str, ...]:
        for pattern, methods in self._routes:
            if pattern.match(path):
                return methods
        return ()


def _app(request):
    """The app's state (swagger_server/state.py), or None before the outermost middleware set it."""
    return peek_request_context(request.scope).get("app")


def retry_after(request, known: int | None = None) -> dict:
    """The Retry-After header of a 503: what the cause knows (`known`), or `[API] retry_after`."""
    state = _app(request)
    configured = state.settings.api.retry_after if state is not None else 1
    return {"Retry-After": str(max(known or 0, configured))}


async def pool_error(_request, exc: PoolError) -> ConnexionResponse:
    """503 with Retry-After. The type says which: pool exhausted, too many waiting, or database down."""
    kinds = {
        PoolTimeout: ("pool-exhausted", "Every database connection is busy; retry shortly."),
        TooManyWaiters: ("pool-exhausted", "Too many requests are waiting for a database connection."),
        DatabaseUnavailable: ("database-unavailable", "The database cannot be reached right now."),
        PoolClosed: ("shutting-down", "This server is shutting down; retry on another instance."),
    }
    kind, detail = kinds.get(type(exc), ("database-unavailable", "The database cannot be reached right now."))
    # Debug only: during an outage this fires for every request. The pool logs the outage itself
    # once when it starts and once when it ends, and its counters (/api/health/db) count every 503.
    logger.debug("503 %s: %s", kind, exc)
    return problem(503, "Service Unavailable", detail, kind, headers=retry_after(_request, exc.retry_after))


async def schema_behind(_request, exc: SchemaBehind) -> ConnexionResponse:
    """503: the database lacks schema files this code needs. The files are named in the log (once),
    not to the client; the client is told what an operator must do."""
    return problem(
        503,
        "Service Unavailable",
        "The database schema is behind this version of the service; an operator must run"
        " `python -m swagger_server db upgrade`.",
        "schema-behind",
        headers=retry_after(_request, exc.retry_after),
    )


# Transient: the same request may succeed if sent again (a lock cycle, a serialization conflict).
_TRANSIENT = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)


def integrity_problem(exc: psycopg2.Error, retry: dict | None = None) -> ConnexionResponse | None:
    """The 4xx (or retryable 503, with the `retry` headers) for a constraint or concurrency error, None
    for any other error."""
    constraint = getattr(exc.diag, "constraint_name", None) or ""
    if isinstance(exc, _TRANSIENT):
        return problem(
            503,
            "Service Unavailable",
            "The request conflicted with a concurrent one; retry.",
            "conflict-retry",
            headers=retry or {"Retry-After": "1"},
        )
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        field, detail = UNIQUE.get(constraint, (None, "this would duplicate an existing resource"))
        return problem(409, "Conflict", detail, "conflict", **({"field": field} if field else {}))
    if isinstance(exc, psycopg2.errors.ForeignKeyViolation):
        missing, referenced = REFERENCES.get(constraint, ((None, "a referenced resource does not exist"), None))
        if (exc.diag.message_primary or "").startswith("update or delete"):
            return problem(409, "Conflict", referenced or "the resource is still referenced", "conflict")
        field, detail = missing
        return problem(404, "Not Found", detail, "not-found", **({"field": field} if field else {}))
    if isinstance(exc, psycopg2.errors.CheckViolation) and constraint in TEXT_RULES:  # db/unicode.py's gap
        field, detail = TEXT_RULES[constraint]
        detail = (
            detail or f"'{field}' holds text the database's text rule refuses (its Unicode is older than the API's)"
        )
        return problem(400, "Bad Request", detail, "bad-request", field=field)
    if isinstance(exc, psycopg2.errors.CheckViolation):
        field, detail = CHECKS.get(constraint, (None, "the change would break a rule of the data"))
        return problem(409, "Conflict", detail, "conflict", **({"field": field} if field else {}))
    if isinstance(exc, psycopg2.errors.NotNullViolation):
        column = exc.diag.column_name or "a field"
        return problem(400, "Bad Request", f"{column} is required", "bad-request", field=column)
    if isinstance(exc, psycopg2.DataError):
        # A value the validators let through but the column cannot hold: the client's input.
        return problem(400, "Bad Request", "a value in the request cannot be stored", "bad-request")
    return None


async def database_error(_request, exc: psycopg2.Error) -> ConnexionResponse:
    """A statement failed. Integrity and concurrency errors are 4xx (integrity_problem); lost
    connections and timeouts are 503 (retryable); anything else is a 500."""
    answer = integrity_problem(exc, retry_after(_request))
    if answer is not None:
        logger.info("%d %s (%s)", answer.status_code, type(exc).__name__, getattr(exc.diag, "constraint_name", None))
        return answer
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        # The request took its whole time budget: sent again, it takes as long again. No Retry-After
        # (which would promise it works next time); the client is told to ask for less.
        operation = _request.scope.get("extensions", {}).get("connexion_routing", {}).get("operation_id") or ""
        operation = operation.rsplit(".", 1)[-1] or "none"
        logger.warning("503 statement-timeout (%s): %s", operation, str(exc).strip())
        state = _app(_request)
        if state is not None:
            state.metrics.statement_timeouts.labels(operation).inc()
        return problem(
            503,
            "Service Unavailable",
            "The query ran past its time limit and was cancelled; the same request would take as long"
            " again. Ask for less (for the dashboard, a shorter range).",
            "statement-timeout",
        )
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        logger.warning("503 database-unavailable: %s", first_line(exc))
        return problem(
            503,
            "Service Unavailable",
            "The database connection was lost.",
            "database-unavailable",
            headers=retry_after(_request),
        )
    return await unexpected_error(_request, exc)


async def unexpected_error(_request, exc: Exception) -> ConnexionResponse:
    logger.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal Server Error", "An unexpected error occurred; it has been logged.", "internal")


def register(app) -> None:
    """Register the handlers on the Connexion app (not on Flask: Connexion's middleware renders errors)."""
    app.add_error_handler(ApiError, api_error)
    app.add_error_handler(ProblemException, framework_problem)
    app.add_error_handler(HTTPException, framework_problem)
    app.add_error_handler(PoolError, pool_error)
    app.add_error_handler(SchemaBehind, schema_behind)
    app.add_error_handler(psycopg2.Error, database_error)
    app.add_error_handler(Exception, unexpected_error)
