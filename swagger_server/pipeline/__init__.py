"""The request pipeline: every layer a request passes through, outermost first, assembled here and
nowhere else (as Connexion's own `middleware/` package). Each layer's module says why it is where
it is; this list is the order.

  0. swagger_server/serving/        the HTTP protocol (uvicorn's httptools): head limits and timeout
                                     (408, 414, 431), trailers dropped, upgrades refused
  1. observability/middleware.py     X-Request-ID, the request's context (state.py), /metrics, the
                                     access log line, the server span: sees every answer
  2. gate.ProblemCORS                CORS, on refusals too (before Connexion's exception layer)
  3. gate.RequestGate                one reading of each request: single headers, the media type, the
                                     whole body before anything reads it (413, 408)
  4. rendered.RenderedOnce           the spec and Swagger UI, rendered once per process
  5. Connexion's stack               (routing.middlewares) exceptions as problem+json, routing with
                                     each API's routes indexed, security (security.py), then
  6. ratelimit.RateLimited           per-caller rate limits, when [API] rate_limit is set: after
                                     security (it knows the caller), before validation (a request
                                     refused as invalid is counted against its caller, and a caller
                                     past its quota costs no validation); then validation (validation.py)
  7. handlers.HandlerThreads         Flask in threads we size: admission (503), a share per caller
                                     (429), the probes' own lane
  8. Flask                           request_scope.py (the request's connection), the controllers
"""

from __future__ import annotations

import functools

from connexion.middleware import MiddlewarePosition

from swagger_server import observability, patches, validation
from swagger_server.pipeline import routing
from swagger_server.pipeline.gate import ProblemCORS, RequestGate
from swagger_server.pipeline.handlers import HandlerThreads
from swagger_server.pipeline.ratelimit import RateLimited, RateLimits, costs_from_spec
from swagger_server.pipeline.rendered import RenderedOnce


def rate_limits(api, metrics) -> RateLimits | None:
    """The limiter of [API] rate_limit, or None without one."""
    if not api.rate_limit:
        return None
    return RateLimits(
        api.rate_limit,
        api.rate_limit_storage,
        on_degraded=lambda down: metrics.rate_limiter_degraded.set(1 if down else 0),
        on_unlimited=metrics.rate_limiter_unlimited.inc,
    )


def connexion_stack(api, limits: RateLimits | None, spec: dict, probes: frozenset) -> list:
    """Layers 5 and 6, given to connexion.FlaskApp(middlewares=...); the costs are the spec's x-rate-cost."""
    limited = None
    if limits is not None:
        limited = functools.partial(RateLimited, limits_=limits, probes=probes, costs=costs_from_spec(spec["paths"]))
    return routing.middlewares(api.validate_responses, after_security=limited)


def handler_threads(app, settings, probes: frozenset, on_loop: frozenset = frozenset()) -> HandlerThreads:
    """Layer 7: Flask (the Connexion app's) in threads we size."""
    api = settings.api
    return HandlerThreads(
        app.app.wsgi_app,
        threads=settings.server.threads,
        timeout=api.admission_timeout,
        retry_after=api.retry_after,
        caller_share=api.caller_share,
        probes=probes,
        on_loop=on_loop,
    )


def assemble(app, spec: dict, settings, state) -> None:
    """Add layers 1 to 4 around Connexion's stack and the API, and the handler threads (7) inside."""
    api = settings.api
    # Layers added at BEFORE_EXCEPTION run in the order added: the first is the outermost.
    app.add_middleware(observability.Observability, position=MiddlewarePosition.BEFORE_EXCEPTION, state=state)
    app.add_middleware(
        ProblemCORS,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allow_origins=list(api.cors_origins),
        allow_credentials=False,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "X-Consistency-Token"],
        expose_headers=[
            "Location",
            "Retry-After",
            "Idempotent-Replayed",
            "X-Request-ID",
            "X-Consistency-Token",
            "WWW-Authenticate",
            "Deprecation",
            "Sunset",
            "Link",
            "RateLimit-Policy",
            "RateLimit",
        ],
        max_age=600,
    )
    app.add_middleware(
        RequestGate,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        max_bytes=api.max_body_bytes,
        body_timeout=api.body_timeout,
    )
    app.add_middleware(RenderedOnce, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_api(
        spec,
        base_path="/api",
        validate_responses=api.validate_responses,
        strict_validation=True,
        validator_map=state.validators,
        uri_parser_class=validation.StrictURIParser,
    )
    patches.serve_flask_with(app, state.handlers)
