"""The app factory: create_app(settings) -> connexion.FlaskApp with middleware, API, errors and db hooks.

(Imported lazily by the package, so that `swagger_server.db` can be used without Connexion or Flask.)

Nothing here opens a socket: the pool is made per process, after gunicorn forks (see wsgi.py), or
lazily on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from pathlib import Path

import connexion
import flask
import yaml
from connexion.options import SwaggerUIOptions

from swagger_server import deprecation, errors, observability, patches, pipeline, security, validation
from swagger_server.config import Settings, load_settings
from swagger_server.db.database import Database
from swagger_server.identity.keys import ApiKeys, KeyRefresher
from swagger_server.identity.oidc import OidcTokens
from swagger_server.jsonify import FastJsonifier
from swagger_server.pipeline import routing
from swagger_server.pipeline.gate import HeadLimits
from swagger_server.reports import ReportCache
from swagger_server.request_scope import RequestScope
from swagger_server.state import AppState, install, of_flask
from swagger_server.version import VERSION

logger = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parent.parent / "swagger"
# Liveness and readiness: answered in a lane of their own, never behind API work (handlers.py).
PROBES = frozenset({"get_health", "get_ready"})
ON_LOOP = frozenset({"get_health"})  # no I/O: answered on the event loop (pipeline/handlers.py)


def create_app(settings: Settings | None = None) -> connexion.FlaskApp:
    """Build the application. Reads settings from config.ini and the environment when none are given.

    Everything the app owns (settings, database, tokens, routes, limits, metrics, validator caches) is
    one AppState, reached only through swagger_server/state.py."""
    settings = settings or load_settings()
    patches.apply()
    spec = security.for_deployment(checked_spec(), settings.api.oidc_issuer)
    database = Database(settings)
    metrics = observability.Metrics()
    tracing = observability.Tracing()
    limits = pipeline.rate_limits(settings.api, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Pool gauges from the start, not from this worker's first request: an idle worker counts too.
        sampler = state.sampler.get()
        sampler.handlers = state.handlers
        lag = observability.LoopLag().start()
        sampler.loop_lag = lag
        # The API keys, read from the first key this worker is shown (identity/keys.py).
        refreshers: list[KeyRefresher] = []
        state.keys.starter = lambda: refreshers.append(
            KeyRefresher(state.keys, database.pool, settings.api.key_refresh).start()
        )
        provider_keys = asyncio.create_task(state.oidc.keep_fresh()) if state.oidc is not None else None
        yield
        if provider_keys is not None:
            provider_keys.cancel()
        state.keys.starter = None
        for refresher in refreshers:
            refresher.stop()
        lag.stop()
        state.sampler.stop()
        state.tracing.shutdown()
        state.handlers.stop()
        observability.flush_access_log()
        # Runs after the server has stopped taking requests and in-flight ones have finished
        # (uvicorn waits for them); gunicorn's worker_exit hook never runs under the uvicorn worker.
        database.close()

    app = connexion.FlaskApp(
        __name__,
        specification_dir=SPEC_DIR,
        lifespan=lifespan,
        # Compact JSON, encoded by orjson with Connexion's rules for dates and decimals (jsonify.py).
        jsonifier=FastJsonifier(),
        pythonic_params=True,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"),
        security_map=security.security_map(),
        # Connexion's own stack, with each API's routes indexed (pipeline/routing.py).
        middlewares=pipeline.connexion_stack(settings.api, limits, spec, PROBES),
    )
    # Everything the app owns, complete when made: nothing is added to it afterwards.
    state = AppState(
        settings=settings,
        database=database,
        metrics=metrics,
        sampler=observability.ProcessSampler(metrics, database),
        tokens=security.Tokens(settings.api.tokens),
        keys=ApiKeys(),
        oidc=(
            OidcTokens(settings.api.oidc_issuer, settings.api.oidc_audience, settings.api.oidc_customer_claim)
            if settings.api.oidc_issuer
            else None
        ),
        required_scopes=security.required_scopes(spec["paths"]),
        customer_scoped=security.customer_scoped(spec["paths"]),
        routes=routing.Routes(spec["paths"], "/api"),
        limits=HeadLimits.of(settings.api),
        validators=validation.validator_map(),
        tracing=tracing,
        deprecations=deprecation.headers_by_operation(spec["paths"]),
        request_scope=RequestScope(database, tracing, on_checkout=_record_pool_wait),
        reports=ReportCache(settings.api.dashboard_max_age),
        handlers=pipeline.handler_threads(app, settings, PROBES, ON_LOOP),
        rate_limits=limits,
    )
    observability.setup_access_log(settings.api.access_log, settings.api.log_format, metrics.access_log_dropped.inc)
    observability.guard_process_logs()
    # Every layer a request passes through, in order, in one place (swagger_server/pipeline/__init__.py).
    pipeline.assemble(app, spec, settings, state)
    install(app.app, state)
    errors.register(app)
    state.request_scope.init_app(app.app)
    return app


def unresolved_operations(spec: dict) -> list[str]:
    """Each operation whose controller function does not exist, as one line (empty when all resolve).

    Connexion resolves an operationId only on the operation's first request; checked here at start."""
    missing = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            module_name = operation.get("x-openapi-router-controller", "")
            name = operation["operationId"]
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if not module_name.startswith(exc.name or "\0"):
                    raise  # the controller exists and imports something missing: that, not the spec, is wrong
                module = None
            if module is None or not callable(getattr(module, name, None)):
                missing.append(f"{method.upper()} {path}: operationId {name!r} has no function {module_name}.{name}")
    return missing


class SpecError(RuntimeError):
    """An operationId of the spec has no controller function."""


@functools.cache
def checked_spec() -> dict:
    """The spec, loaded and checked once per process (gunicorn's master checks it at start and at each
    reload, so a bad spec stops it before a worker starts; each worker loads it once more, from disk).
    SpecError names each operation without a function."""
    spec = load_spec()
    missing = unresolved_operations(spec)
    if missing:
        raise SpecError("; ".join(missing))
    try:
        deprecation.headers_by_operation(spec["paths"])
    except deprecation.DeprecationSpecError as exc:
        raise SpecError(str(exc)) from None
    return spec


def load_spec() -> dict:
    """swagger.yaml, with the one version (pyproject.toml's) as info.version."""
    with open(SPEC_DIR / "swagger.yaml", encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    spec["info"]["version"] = VERSION
    return spec


def _record_pool_wait(pool: str, seconds: float) -> None:
    if flask.has_request_context():
        observability.record_pool_wait(flask.request.environ, pool, seconds)


def get_database(app: connexion.FlaskApp) -> Database:
    """The app's Database (its pool for this process)."""
    return of_flask(app.app).database
