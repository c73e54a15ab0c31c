"""Problem+json errors: the exceptions controllers raise, and the one place that renders every error.

Every error body has the same shape (RFC 9457): type, title, status, detail. 5xx bodies never carry
database or stack text; anything unexpected is logged once with its traceback.
"""

from __future__ import annotations

import logging

import psycopg2
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionResponse
from starlette.exceptions import HTTPException

from swagger_server import problems
from swagger_server.db.constraints import CHECKS, REFERENCES, TEXT_RULES, UNIQUE
from swagger_server.db.errors import (
    DatabaseUnavailable,
    PoolClosed,
    PoolError,
    PoolTimeout,
    SchemaBehind,
    TooManyWaiters,
)
from swagger_server.state import operation as state_operation
from swagger_server.state import peek_request_context
from swagger_server.text import first_line

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client can act on. Subclasses fix the status and the kind (the end of its type)."""

    status = 400
    kind = "bad-request"

    def __init__(self, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class Unauthorized(ApiError):
    status, kind = 401, "unauthorized"


class Forbidden(ApiError):
    status, kind = 403, "forbidden"


class NotFound(ApiError):
    status, kind = 404, "not-found"


class Conflict(ApiError):
    status, kind = 409, "conflict"


class InsufficientStock(Conflict):
    kind = "insufficient-stock"


class PayloadTooLarge(ApiError):
    status, kind = 413, "payload-too-large"


class UnprocessableEntity(ApiError):
    status, kind = 422, "unprocessable"


# No error body or log line carries more than this much of anything a client sent.
EXCERPT = 120


def excerpt(value, limit: int = EXCERPT) -> str:
    """A short, printable excerpt of client input: repr-escaped, cut at `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


async def api_error(_request, exc: ApiError) -> ConnexionResponse:
    return problems.response(exc.status, exc.detail, exc.kind, exc.headers, **exc.extra)


async def framework_problem(request, exc) -> ConnexionResponse:
    """Connexion's problems (validation, security, media type) and Starlette's HTTP errors (routing),
    in our shape. Their detail may quote client input (an unknown parameter's name), so it is cut."""
    status = getattr(exc, "status_code", 500)
    detail = excerpt(str(getattr(exc, "detail", "") or problems.title(status)), 300)
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
    return problems.response(status, detail, headers=headers)


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
    return problems.response(503, detail, kind, headers=retry_after(_request, exc.retry_after))


async def schema_behind(_request, exc: SchemaBehind) -> ConnexionResponse:
    """503: the database lacks schema files this code needs. The files are named in the log (once),
    not to the client; the client is told what an operator must do."""
    return problems.response(
        503,
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
        return problems.response(
            503,
            "The request conflicted with a concurrent one; retry.",
            "conflict-retry",
            headers=retry or {"Retry-After": "1"},
        )
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        field, detail = UNIQUE.get(constraint, (None, "this would duplicate an existing resource"))
        return problems.response(409, detail, "conflict", field=field)
    if isinstance(exc, psycopg2.errors.ForeignKeyViolation):
        missing, referenced = REFERENCES.get(constraint, ((None, "a referenced resource does not exist"), None))
        if (exc.diag.message_primary or "").startswith("update or delete"):
            return problems.response(409, referenced or "the resource is still referenced", "conflict")
        field, detail = missing
        return problems.response(404, detail, "not-found", field=field)
    if isinstance(exc, psycopg2.errors.CheckViolation) and constraint in TEXT_RULES:  # db/unicode.py's gap
        field, detail = TEXT_RULES[constraint]
        detail = (
            detail or f"'{field}' holds text the database's text rule refuses (its Unicode is older than the API's)"
        )
        return problems.response(400, detail, "bad-request", field=field)
    if isinstance(exc, psycopg2.errors.CheckViolation):
        field, detail = CHECKS.get(constraint, (None, "the change would break a rule of the data"))
        return problems.response(409, detail, "conflict", field=field)
    if isinstance(exc, psycopg2.errors.NotNullViolation):
        column = exc.diag.column_name or "a field"
        return problems.response(400, f"{column} is required", "bad-request", field=column)
    if isinstance(exc, psycopg2.DataError):
        # A value the validators let through but the column cannot hold: the client's input.
        return problems.response(400, "a value in the request cannot be stored", "bad-request")
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
        operation = state_operation(_request.scope) or "none"
        logger.warning("503 statement-timeout (%s): %s", operation, str(exc).strip())
        state = _app(_request)
        if state is not None:
            state.metrics.statement_timeouts.labels(operation).inc()
        return problems.response(
            503,
            "The query ran past its time limit and was cancelled; the same request would take as long"
            " again. Ask for less (for the dashboard, a shorter range).",
            "statement-timeout",
        )
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        logger.warning("503 database-unavailable: %s", first_line(exc))
        return problems.response(
            503,
            "The database connection was lost.",
            "database-unavailable",
            headers=retry_after(_request),
        )
    return await unexpected_error(_request, exc)


async def unexpected_error(_request, exc: Exception) -> ConnexionResponse:
    logger.exception("unhandled error", exc_info=exc)
    return problems.response(500, "An unexpected error occurred; it has been logged.", "internal")


def register(app) -> None:
    """Register the handlers on the Connexion app (not on Flask: Connexion's middleware renders errors)."""
    app.add_error_handler(ApiError, api_error)
    app.add_error_handler(ProblemException, framework_problem)
    app.add_error_handler(HTTPException, framework_problem)
    app.add_error_handler(PoolError, pool_error)
    app.add_error_handler(SchemaBehind, schema_behind)
    app.add_error_handler(psycopg2.Error, database_error)
    app.add_error_handler(Exception, unexpected_error)
