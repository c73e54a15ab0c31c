"""Problem+json errors: the exceptions controllers raise, and the one place that renders every error.

Every error body has the same shape (RFC 9457): type, title, status, detail. 5xx bodies never carry
database or stack text; anything unexpected is logged once with its traceback.
"""
from __future__ import annotations

import json
import logging

import psycopg2
from connexion.lifecycle import ConnexionResponse
from connexion.utils import is_null, is_nullable
from connexion.validators import ParameterValidator
from jsonschema import Draft4Validator

# The same format checker Connexion's own parameter validator uses.
draft4_format_checker = Draft4Validator.FORMAT_CHECKER

from swagger_server.db.pool import DatabaseUnavailable, PoolClosed, PoolError, PoolTimeout, TooManyWaiters

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
PROBLEM_BASE = "/api/problems/"


class ApiError(Exception):
    """An error the client can act on. Subclasses fix status, title and type."""

    status = 400
    title = "Bad Request"
    kind = "bad-request"

    def __init__(self, detail: str, **extra):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(ApiError):
    status, title, kind = 404, "Not Found", "not-found"


class Conflict(ApiError):
    status, title, kind = 409, "Conflict", "conflict"


class InsufficientStock(Conflict):
    kind = "insufficient-stock"


class UnprocessableEntity(ApiError):
    status, title, kind = 422, "Unprocessable Entity", "unprocessable"


def problem(status: int, title: str, detail: str, kind: str, headers: dict | None = None,
            **extra) -> ConnexionResponse:
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail, **extra}
    return ConnexionResponse(status_code=status, content_type=PROBLEM, headers=headers or {},
                             body=json.dumps(body, separators=(",", ":")))


def api_error(_request, exc: ApiError) -> ConnexionResponse:
    return problem(exc.status, exc.title, exc.detail, exc.kind, **exc.extra)


def pool_error(_request, exc: PoolError) -> ConnexionResponse:
    """503 with Retry-After. The type says which: pool exhausted, too many waiting, or database down."""
    kinds = {PoolTimeout: ("pool-exhausted", "Every database connection is busy; retry shortly."),
             TooManyWaiters: ("pool-exhausted", "Too many requests are waiting for a database connection."),
             DatabaseUnavailable: ("database-unavailable", "The database cannot be reached right now."),
             PoolClosed: ("shutting-down", "This server is shutting down; retry on another instance.")}
    kind, detail = kinds.get(type(exc), ("database-unavailable", "The database cannot be reached right now."))
    # Debug only: during an outage this fires for every request. The pool logs the outage itself
    # once when it starts and once when it ends, and its counters (/api/health/db) count every 503.
    logger.debug("503 %s: %s", kind, exc)
    return problem(503, "Service Unavailable", detail, kind, headers={"Retry-After": str(exc.retry_after)})


def database_error(_request, exc: psycopg2.Error) -> ConnexionResponse:
    """A statement failed. Lost connections and timeouts are 503 (retryable); anything else is a 500."""
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        logger.warning("503 statement-timeout: %s", str(exc).strip())
        return problem(503, "Service Unavailable", "The database did not answer in time.", "statement-timeout",
                       headers={"Retry-After": "1"})
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        logger.warning("503 database-unavailable: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
        return problem(503, "Service Unavailable", "The database connection was lost.", "database-unavailable",
                       headers={"Retry-After": "1"})
    return unexpected_error(_request, exc)


def unexpected_error(_request, exc: Exception) -> ConnexionResponse:
    logger.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal Server Error", "An unexpected error occurred; it has been logged.", "internal")


class NamingParameterValidator(ParameterValidator):
    """Connexion's parameter validator with two changes:

    - messages name the parameter and omit the schema dump:
      "query parameter 'limit': 1000 is greater than the maximum of 100";
    - one jsonschema validator per parameter, built once. Connexion deep-copies the schema and builds
      a new validator on every request, which cost about 8% of a worker's CPU on GET /customers/{id}.
    """

    _validators: dict[int, tuple[dict, Draft4Validator]] = {}

    @staticmethod
    def validate_parameter(parameter_type, value, param, param_name=None):
        if is_nullable(param) and is_null(value):
            return None
        if value is None:
            return f"Missing {parameter_type} parameter '{param['name']}'" if param.get("required") else None
        # Keyed by the spec's own dict, which lives as long as the app; the dict is kept in the value
        # so its id cannot be reused by another object.
        cached = NamingParameterValidator._validators.get(id(param))
        if cached is None or cached[0] is not param:
            cached = (param, Draft4Validator(param.get("schema", param), format_checker=draft4_format_checker))
            NamingParameterValidator._validators[id(param)] = cached
        error = next(cached[1].iter_errors(value), None)
        if error is None:
            return None
        return f"{parameter_type} parameter '{param_name or param.get('name')}': {error.message}"


VALIDATORS = {"parameter": NamingParameterValidator}


def register(app) -> None:
    """Register the handlers on the Connexion app (not on Flask: Connexion's middleware renders errors)."""
    app.add_error_handler(ApiError, api_error)
    app.add_error_handler(PoolError, pool_error)
    app.add_error_handler(psycopg2.Error, database_error)
    app.add_error_handler(Exception, unexpected_error)
