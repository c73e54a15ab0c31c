"""The app factory: create_app(settings) -> connexion.FlaskApp with middleware, API, errors and db hooks.

(Imported lazily by the package, so that `swagger_server.db` can be used without Connexion or Flask.)

Nothing here opens a socket: the pool is made per process, after gunicorn forks (see wsgi.py), or
lazily on first use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
from pathlib import Path

import connexion
import connexion.security as _connexion_security
import flask
import yaml
from connexion.apps.flask import FlaskOperation
from connexion.context import operation as _current_operation
from connexion.decorators import FlaskDecorator
from connexion.frameworks import flask as _connexion_flask
from connexion.frameworks import starlette as _connexion_starlette
from connexion.jsonifier import Jsonifier
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions

from swagger_server import errors, observability, security, validation
from swagger_server.config import Settings, load_settings
from swagger_server.db.database import Database
from swagger_server.gate import ProblemCORS, RequestGate
from swagger_server.handlers import HandlerThreads
from swagger_server.rendered import RenderedOnce
from swagger_server.request_scope import RequestScope
from swagger_server.version import VERSION

logger = logging.getLogger(__name__)

# Connexion's router turns an integer path segment into an int before anything validates it, and
# Python refuses to parse more than 4300 digits (ValueError: a 500). Routing at most 20 digits keeps
# every int64 (and one digit more, which the spec's `maximum` refuses with 400); longer is a 404.
# Flask routes again (a path Connexion did not match reaches it), with the same converter.
_connexion_starlette.IntegerConverter.regex = _connexion_flask.IntegerConverter.regex = r"[+-]?[0-9]{1,20}"

SPEC_DIR = Path(__file__).resolve().parent.parent / "swagger"


def _decorate_once(self: FlaskOperation):
    """FlaskOperation.fn, built once per operation instead of on every request.

    Connexion 3.3's `FlaskOperation.fn` is a property: each request built a FlaskDecorator, which
    inspected the handler's signature and wrapped it three times, and a URI parser for the operation.
    All of that depends only on the handler and the operation, so here it is made once; what depends on
    the request (its parameters and body) is still read per request by the same Connexion code."""
    cached = self.__dict__.get("_store_api_fn")
    if cached is not None:
        return cached
    decorator = FlaskDecorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
    decorated = decorator.decorate(self._fn)
    get_request = decorator.framework.get_request
    parsers: dict = {}  # the routed (middleware) operation -> its URI parser

    @functools.wraps(self._fn)
    def fn(*_args, **_kwargs):
        routed = _current_operation._get_current_object()
        parser = parsers.get(routed)
        if parser is None:
            parser = parsers[routed] = routed.uri_parser_class(routed.parameters, routed.body_definition())
        request = get_request(uri_parser=parser)
        # One reading: the parameters and body the validators checked (swagger_server/validation.py),
        # not werkzeug's second parse of the same URL and bytes.
        read = validation.stash(flask.request.environ["asgi.scope"])
        if "query" in read:
            request._query_params = read["query"]
            request._path_params = read["path"]
        if "body" in read:
            request._body = read["body"]
        return decorated(request)

    self.__dict__["_store_api_fn"] = fn
    return fn


FlaskOperation.fn = property(_decorate_once)


def _arguments_once(inspect_function_arguments):
    """Connexion's security wrapper inspects the token function's signature (inspect.signature) twice
    per authenticated request, 25 µs on the event loop; a function's signature does not change."""
    cache: dict = {}

    def cached(function):
        found = cache.get(function)
        if found is None:
            found = cache[function] = inspect_function_arguments(function)
        return found

    return cached


_connexion_security.inspect_function_arguments = _arguments_once(_connexion_security.inspect_function_arguments)


def create_app(settings: Settings | None = None) -> connexion.FlaskApp:
    """Build the application. Reads settings from config.ini and the environment when none are given."""
    settings = settings or load_settings()
    database = Database(settings)
    scope = RequestScope(database)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Pool gauges from the start, not from this worker's first request: an idle worker counts too.
        metrics = observability.pool_metrics(database)
        metrics.handlers = app.app.extensions["handlers"]
        lag = observability.LoopLag().start()
        metrics.loop_lag = lag
        yield
        lag.stop()
        app.app.extensions["handlers"].stop()
        observability.flush_access_log()
        # Runs after the server has stopped taking requests and in-flight ones have finished
        # (uvicorn waits for them); gunicorn's worker_exit hook never runs under the uvicorn worker.
        database.close()

    app = connexion.FlaskApp(
        __name__,
        specification_dir=SPEC_DIR,
        lifespan=lifespan,
        # Connexion's default indent=2 forces the pure-Python encoder; compact output keeps the C one.
        jsonifier=Jsonifier(json, separators=(",", ":")),
        pythonic_params=True,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"),
    )
    # Outermost (added first at this position): sees every answer, serves /metrics, logs each request.
    app.add_middleware(
        observability.Observability,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        database=database,
        metrics_token=settings.api.metrics_token,
        metrics_port=settings.api.metrics_port,
    )
    observability.setup_access_log(settings.api.access_log, settings.api.log_format)
    scope.on_checkout = _record_pool_wait
    # Before the exception middleware, so error responses rendered by Connexion carry CORS headers too.
    app.add_middleware(
        ProblemCORS,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allow_origins=list(settings.api.cors_origins),
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
        ],
        max_age=600,
    )
    # One reading of each request, and its whole body, before anything else reads it (swagger_server/gate.py):
    # inside CORS (its refusals carry CORS headers), before security, validation and the handler threads.
    app.add_middleware(
        RequestGate,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        max_bytes=settings.api.max_body_bytes,
        body_timeout=settings.api.body_timeout,
    )
    # The spec and the UI, rendered once per process, not on the event loop for every request.
    app.add_middleware(RenderedOnce, position=MiddlewarePosition.BEFORE_EXCEPTION)
    spec = load_spec()
    missing = unresolved_operations(spec)
    if missing:
        raise RuntimeError("; ".join(missing))
    app.add_api(
        spec,
        base_path="/api",
        validate_responses=settings.api.validate_responses,
        strict_validation=True,
        validator_map=validation.VALIDATORS,
        uri_parser_class=validation.StrictURIParser,
    )
    errors.set_routes(spec["paths"], "/api")
    # Flask handlers run in a few threads per worker (we size them), behind admission control, so that
    # excess requests wait a bounded time instead of queueing without limit (swagger_server/handlers.py).
    handlers = HandlerThreads(
        app.app.wsgi_app,
        threads=settings.server.threads,
        timeout=settings.pool.timeout,
        retry_after=settings.api.retry_after,
    )
    app.middleware.app.asgi_app = handlers
    app.app.extensions["handlers"] = handlers
    errors.register(app)
    security.configure(settings.api.tokens)
    scope.init_app(app.app)
    app.app.config["SETTINGS"] = settings
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
            except ImportError:
                module = None
            if module is None or not callable(getattr(module, name, None)):
                missing.append(f"{method.upper()} {path}: operationId {name!r} has no function {module_name}.{name}")
    return missing


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
    return app.app.extensions["db"]
