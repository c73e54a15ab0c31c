"""What one app owns, in one object (AppState), and the one home of every way to reach it: from a
Flask handler `current()`, from code on the event loop the request's context (`request_context`,
which the outermost middleware fills in: the app's state, the request id, the operation, ...). The
key under which both live is spelled once, here (KEY); nothing else reads `flask_app.extensions` or
`flask_app.config` by string (tests/project/test_layers.py). Nothing an app owns lives at module level, so
two apps in one process (tests, an embedding) share nothing (tests/project/test_two_apps.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import current_app

if TYPE_CHECKING:
    from swagger_server.config import Settings
    from swagger_server.db.database import Database
    from swagger_server.identity.keys import ApiKeys
    from swagger_server.identity.oidc import OidcTokens
    from swagger_server.observability import Metrics, ProcessSampler
    from swagger_server.observability.tracing import Tracing
    from swagger_server.pipeline.gate import HeadLimits
    from swagger_server.pipeline.handlers import HandlerThreads
    from swagger_server.pipeline.ratelimit import RateLimits
    from swagger_server.pipeline.routing import Routes
    from swagger_server.reports import ReportCache
    from swagger_server.request_scope import RequestScope
    from swagger_server.security import Tokens

KEY = "store_api"  # flask_app.extensions[KEY] is the AppState; scope["extensions"][KEY] the request's context


@dataclass(eq=False, frozen=True)
class AppState:
    """Complete when made (app.py): nothing is added to it afterwards, and frozen so nothing can be."""

    settings: Settings
    database: Database
    metrics: Metrics
    sampler: ProcessSampler  # the pool gauges' sampling thread, one per process
    tokens: Tokens
    keys: ApiKeys  # the API keys the service issued, in memory (identity/keys.py)
    oidc: OidcTokens | None  # an OpenID provider's access tokens, when [API] oidc_issuer is set (identity/oidc.py)
    required_scopes: dict[str, str]  # operationId -> the scope it needs (the spec's x-required-scope)
    customer_scoped: frozenset[str]  # operations open to a caller bound to one customer (the spec's x-customer-scoped)
    routes: Routes  # path templates -> methods, for the Allow header of a 405
    limits: HeadLimits  # the HTTP layer's head limits (swagger_server/serving/protocol.py)
    validators: dict[str, Any]  # Connexion's validator_map, with this app's validator caches
    tracing: Tracing  # OpenTelemetry, from the OTEL_* variables (off by default)
    # operationId -> Deprecation, Sunset, Link of a deprecated operation (swagger_server/deprecation.py)
    deprecations: dict[str, list[tuple[bytes, bytes]]]
    request_scope: RequestScope  # the per-request connection and its teardown (request_scope.py)
    reports: ReportCache  # the dashboard's reports, kept for [API] dashboard_max_age (reports.py)
    handlers: HandlerThreads  # Flask in threads we size (pipeline/handlers.py)
    rate_limits: RateLimits | None  # [API] rate_limit (swagger_server/pipeline/ratelimit.py), when set


def install(flask_app, state: AppState) -> None:
    flask_app.extensions[KEY] = state


def of_flask(flask_app) -> AppState:
    return flask_app.extensions[KEY]


def current() -> AppState:
    """The state of the app serving this request, from a Flask handler (an app context)."""
    return current_app.extensions[KEY]


def begin_request(scope, context: dict) -> dict:
    """Make `context` this request's context (the outermost middleware, once per request): shared by
    reference with every layer inside."""
    scope.setdefault("extensions", {})[KEY] = context
    return context


def request_context(scope) -> dict:
    """This request's context (an ASGI scope): the one the outermost middleware began, or a new one
    (a layer run without it, as in a unit test)."""
    return scope.setdefault("extensions", {}).setdefault(KEY, {})


def peek_request_context(scope) -> dict:
    """As request_context, without adding one to the scope (read-only callers)."""
    return (scope or {}).get("extensions", {}).get(KEY, {})


def of_scope(scope) -> AppState:
    """The state of the app serving this request (an ASGI scope)."""
    return scope["extensions"][KEY]["app"]


def operation(scope) -> str:
    """This request's operationId ('' when none): what Connexion's router found, kept in the request's
    context once the request is past security (pipeline/routing.Identified); read from the router's
    result by what runs before (security itself, an error handler)."""
    context = peek_request_context(scope)
    if "operation" in context:
        return context["operation"]
    routing = (scope or {}).get("extensions", {}).get("connexion_routing", {})
    return (routing.get("operation_id") or "").rsplit(".", 1)[-1]


def caller(scope) -> str | None:
    """Who is asking, as security.py named it (`key:<id>`, `oidc:<sub>`, a token's digest), or None when
    no token was checked; kept in the request's context as `operation` is."""
    context = peek_request_context(scope)
    if "caller" in context:
        return context["caller"]
    return (scope or {}).get("extensions", {}).get("connexion_context", {}).get("user")
