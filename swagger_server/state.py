"""What one app owns, in one object: `flask_app.extensions["store_api"]`, and for code on the event
loop the request's scope (the outermost middleware puts it there). Nothing an app owns lives at module
level, so two apps in one process (tests, an embedding) share nothing (tests/test_two_apps.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swagger_server.config import Settings
    from swagger_server.db.database import Database
    from swagger_server.errors import Routes
    from swagger_server.gate import HeadLimits
    from swagger_server.handlers import HandlerThreads
    from swagger_server.observability import Metrics, ProcessSampler
    from swagger_server.observability.tracing import Tracing
    from swagger_server.ratelimit import RateLimits
    from swagger_server.security import Tokens

EXTENSION = "store_api"


@dataclass(eq=False)
class AppState:
    settings: Settings
    database: Database
    metrics: Metrics
    sampler: ProcessSampler  # the pool gauges' sampling thread, one per process
    tokens: Tokens
    routes: Routes  # path templates -> methods, for the Allow header of a 405
    limits: HeadLimits  # the HTTP layer's head limits (swagger_server/server.py)
    validators: dict[str, Any]  # Connexion's validator_map, with this app's validator caches
    tracing: Tracing  # OpenTelemetry, from the OTEL_* variables (off by default)
    # operationId -> Deprecation, Sunset, Link of a deprecated operation (swagger_server/deprecation.py)
    deprecations: dict[str, list[tuple[bytes, bytes]]]
    handlers: HandlerThreads | None = None
    rate_limits: RateLimits | None = None  # [API] rate_limit (swagger_server/ratelimit.py), when set


def of_scope(scope) -> AppState:
    """The state of the app serving this request (an ASGI scope)."""
    return scope["extensions"]["store_api"]["app"]


def of_flask(flask_app) -> AppState:
    return flask_app.extensions[EXTENSION]
