"""Every change this service makes to its frameworks' behaviour, in one place, each with why.

Two kinds. Patches (`apply()`, idempotent, called by create_app) change a framework's module or class
for the whole process; there are four, each scoped as narrowly as Connexion allows. Overrides are
subclasses of framework classes that rely on private names (they change nothing for anyone else);
they live with their code and are listed in RELIED_ON. tests/project/test_patches.py checks that every name
in RELIED_ON exists with the signature expected, so an upgrade that moves one fails there, by name,
and not as a behaviour change somewhere else (`make deps-latest` runs the suite on the newest
releases the requirements allow: the upgrade canary).

Connexion's documented extension points are used where they exist, instead of patches:
`validator_map` (validation.py), `security_map` (security.py: the cached bearer handler),
`uri_parser_class` (validation.StrictURIParser), `jsonifier`, `middlewares` positions.
"""

from __future__ import annotations

import functools

import flask
from connexion import utils as _connexion_utils
from connexion.apps.flask import FlaskOperation
from connexion.context import operation as _current_operation
from connexion.decorators import FlaskDecorator
from connexion.decorators.parameter import SyncParameterDecorator, pythonic, sanitized
from connexion.frameworks import flask as _connexion_flask
from connexion.frameworks import starlette as _connexion_starlette
from connexion.http_facts import FORM_CONTENT_TYPES
from starlette import routing as _starlette_routing

from swagger_server.errors import NotFound, excerpt
from swagger_server.state import request_context

# (module or class, attribute, the parameters expected, or None for a non-callable): what the patches
# and the overrides rely on. Checked by tests/project/test_patches.py.
RELIED_ON = [
    # Patch 1: path parameters of type integer are routed as plain segments.
    (_connexion_flask, "PATH_PARAMETER_CONVERTERS", None),
    (_connexion_starlette, "PATH_PARAMETER_CONVERTERS", None),
    # Patch 3: extract_content_type without the typing alias (its callers look it up in the module).
    ("connexion.utils", "extract_content_type", ("headers",)),
    # Patch 2: FlaskOperation.fn built once per operation.
    (FlaskOperation, "fn", None),
    (FlaskOperation, "_fn", None),
    (FlaskOperation, "pythonic_params", None),
    (FlaskOperation, "jsonifier", None),
    (FlaskDecorator, "__init__", ("self", "pythonic_params", "uri_parser_class", "jsonifier")),
    (FlaskDecorator, "decorate", ("self", "function")),
    (FlaskDecorator, "_parameter_decorator_cls", None),
    (SyncParameterDecorator, "__init__", ("self", "framework", "pythonic_params")),
    ("connexion.decorators.parameter.BaseParameterDecorator", "sanitize_fn", None),
    ("connexion.decorators.parameter", "pythonic", ("name",)),
    ("connexion.decorators.parameter", "sanitized", ("name",)),
    ("connexion.frameworks.flask.Flask", "get_request", ("uri_parser", "kwargs")),
    ("connexion.operations.AbstractOperation", "body_definition", ("self", "content_type")),
    ("connexion.operations.AbstractOperation", "uri_parser_class", None),
    ("connexion.lifecycle.WSGIRequest", "_query_params", None),
    ("connexion.lifecycle.WSGIRequest", "_path_params", None),
    ("connexion.lifecycle.WSGIRequest", "_body", None),
    ("connexion.lifecycle.WSGIRequest", "files", ("self",)),
    ("connexion.operations.AbstractOperation", "consumes", None),
    ("connexion.http_facts", "FORM_CONTENT_TYPES", None),
    # Patch 5: the Flask side served by our ASGI app (app.middleware.app.asgi_app).
    ("connexion.apps.abstract.AbstractApp", "middleware", None),
    ("connexion.middleware.main.ConnexionMiddleware", "app", None),
    ("connexion.apps.flask.FlaskASGIApp", "asgi_app", None),
    # Overrides: validation.py
    ("connexion.validators.JSONRequestBodyValidator", "_parse", ("self", "stream", "scope")),
    ("connexion.validators.JSONRequestBodyValidator", "_validate", ("self", "body")),
    ("connexion.validators.JSONRequestBodyValidator", "_validator", None),
    ("connexion.validators.AbstractRequestBodyValidator", "_nullable", None),
    ("connexion.validators.AbstractRequestBodyValidator", "_schema", None),
    (
        "connexion.validators.ParameterValidator",
        "validate_parameter",
        ("parameter_type", "value", "param", "param_name"),
    ),
    ("connexion.validators.ParameterValidator", "validate_request", ("self", "request")),
    ("connexion.validators.ParameterValidator", "validate", ("self", "scope")),
    ("connexion.validators.ParameterValidator", "parameters", None),
    (
        "connexion.validators.ParameterValidator",
        "validate_query_parameter_list",
        ("self", "request", "security_params"),
    ),
    ("connexion.uri_parsing.OpenAPIURIParser", "resolve_params", ("self", "params", "_in")),
    ("connexion.uri_parsing.OpenAPIURIParser", "param_schemas", None),
    # Overrides: routing.py (the indexed router, in Connexion's middleware list)
    ("connexion.middleware.main.ConnexionMiddleware", "default_middlewares", None),
    (
        "connexion.middleware.routing.RoutingMiddleware",
        "add_api",
        ("self", "specification", "base_path", "arguments", "kwargs"),
    ),
    ("connexion.middleware.routing.RoutingMiddleware", "router", None),
    ("starlette.routing.Router", "app", ("self", "scope", "receive", "send")),
    (
        "starlette.routing.Router",
        "__init__",
        ("self", "routes", "redirect_slashes", "default", "lifespan", "middleware", "max_body_size"),
    ),
    ("starlette.routing.Mount", "_base_app", None),
    ("starlette.routing.Route", "matches", ("self", "scope")),
    ("starlette.routing.Route", "handle", ("self", "scope", "receive", "send")),
    ("starlette._utils", "get_route_path", ("scope",)),
    # Overrides: security.py (the cached bearer handler)
    ("connexion.security.BearerSecurityHandler", "_accepts_kwarg", ("func", "keyword")),
    # Overrides: serving/ (uvicorn's httptools protocol and server, uvicorn_worker's worker)
    (
        "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol",
        "__init__",
        ("self", "config", "server_state", "app_state", "_loop"),
    ),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "data_received", ("self", "data")),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_message_begin", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_url", ("self", "url")),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_header", ("self", "name", "value")),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_headers_complete", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_message_complete", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_response_complete", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "connection_lost", ("self", "exc")),
    ("uvicorn.server.Server", "shutdown", ("self", "sockets")),
    ("uvicorn_worker.UvicornWorker", "_serve", ("self",)),
    ("uvicorn_worker.UvicornWorker", "_install_sigquit_handler", ("self",)),
    # What those overrides read of the objects they extend (found in the code by
    # tests/project/test_patches.py::test_every_framework_name_the_code_relies_on_is_in_relied_on).
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "_unset_keepalive_if_required", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "connection_made", ("self", "transport")),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "on_body", ("self", "body")),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "shutdown", ("self",)),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "parser", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "cycle", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "client", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "logger", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "loop", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "scope", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "transport", None),
    ("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol", "url", None),
    # ... and of a request's cycle (serving/protocol.py marks a refused or lost request's cycle done).
    ("uvicorn.protocols.http.httptools_impl.RequestResponseCycle", "response_complete", None),
    ("uvicorn.protocols.http.httptools_impl.RequestResponseCycle", "disconnected", None),
    ("uvicorn.protocols.http.httptools_impl.RequestResponseCycle", "message_event", None),
    ("uvicorn.protocols.http.httptools_impl.RequestResponseCycle", "keep_alive", None),
    ("uvicorn.server.Server", "startup", ("self", "sockets")),
    ("uvicorn.server.Server", "config", None),
    ("uvicorn.server.Server", "lifespan", None),
    ("uvicorn.lifespan.on.LifespanOn", "state", None),
    ("uvicorn.server.Server", "server_state", None),
    ("uvicorn.server.Server", "should_exit", None),
    ("uvicorn.server.Server", "started", None),
    ("uvicorn_worker._workers.UvicornWorker", "CONFIG_KWARGS", None),
    ("uvicorn_worker._workers.UvicornWorker", "config", None),
    ("uvicorn_worker._workers.UvicornWorker", "log", None),
    ("uvicorn_worker._workers.UvicornWorker", "ppid", None),
    ("uvicorn_worker._workers.UvicornWorker", "sockets", None),
    ("uvicorn_worker._workers.UvicornWorker", "wsgi", None),
    # gunicorn.conf.py's hooks: the arbiter's table of workers, a worker's own signal handling.
    ("gunicorn.arbiter.Arbiter", "WORKERS", None),
    ("gunicorn.workers.base.Worker", "init_signals", ("self",)),
    # gate.py's CORS: Starlette's preflight answer, rendered as a problem when it refuses.
    ("starlette.middleware.cors.CORSMiddleware", "preflight_response", ("self", "request_headers")),
    ("starlette.middleware.cors.CORSMiddleware", "app", None),
    ("starlette.routing.Router", "routes", None),
    # validation.py, jsonify.py
    ("connexion.validators.parameter.ParameterValidator", "security_query_params", None),
    ("connexion.validators.parameter.ParameterValidator", "strict_validation", None),
    ("connexion.jsonifier.Jsonifier", "dumps", ("self", "data", "kwargs")),
    # Patch 4: the operation Connexion routed to, read from its context proxy; handlers.py's environ.
    ("werkzeug.local.LocalProxy", "_get_current_object", None),
    ("a2wsgi.wsgi", "build_environ", ("scope", "body")),
]
# Each patch (a function of this module) and the behaviour tests that fail if the framework changes
# what the patch relies on, or the patch stops doing what it is for (tests/project/test_patches.py
# checks every patch apply() makes has an entry, and every test named exists).
BEHAVIOUR_TESTS = {
    "_route_integers_as_segments": (
        "tests/controllers/test_customers.py::test_a_non_numeric_id_is_a_400_naming_the_parameter",
        "tests/project/test_patches.py::test_plain_flask_and_starlette_int_routes_keep_their_converters",
    ),
    "extract_content_type": (
        "tests/pipeline/test_request_path.py::test_extract_content_type_answers_as_connexions_did",
    ),
    "_decorate_once": (
        "tests/project/test_patches.py::test_each_operation_is_decorated_once",
        "tests/project/test_patches.py::test_a_handler_replaced_after_the_first_request_is_used",
    ),
    "_without_slash_redirects": (
        "tests/pipeline/test_http_layer.py::test_redirects_and_unknown_paths_are_problems_with_a_path_only_location",
    ),
    "serve_flask_with": (
        "tests/pipeline/test_handlers.py::test_one_caller_holds_at_most_its_share_and_the_other_threads_stay_for_the_others",
        "tests/pipeline/test_handlers.py::test_waiting_requests_are_served_in_arrival_order_and_counted_in_metrics",
    ),
}
# Keys of an ASGI scope's "extensions" that Connexion fills and our layers read (state.operation and
# state.caller, read once after security): a request's routing and its security's verdict.
SCOPE_KEYS = ("connexion_routing", "connexion_context")


def apply() -> None:
    """Apply the patches (once per process; applying again changes nothing)."""
    _route_integers_as_segments()
    _connexion_utils.extract_content_type = extract_content_type
    if not isinstance(FlaskOperation.__dict__.get("fn"), _OnceProperty):
        FlaskOperation.fn = _OnceProperty(_decorate_once)
    if not getattr(_starlette_routing.Router.__init__, "store_api_patched", False):
        _starlette_routing.Router.__init__ = _without_slash_redirects(_starlette_routing.Router.__init__)


def serve_flask_with(app, asgi_app) -> None:
    """Patch 5 (per app, not per process): Connexion's FlaskASGIApp serves Flask through a2wsgi's
    WSGIMiddleware, one thread pool per app without a bound; `asgi_app` (ours: HandlerThreads, maybe
    behind RateLimited) takes its place, so the Flask side runs in threads we size and admit."""
    app.middleware.app.asgi_app = asgi_app


def _without_slash_redirects(init):
    """Patch 4. Starlette's Router answers a path that misses by one trailing slash with a redirect
    whose Location is built from the request's Host (`POST /api` with `Host: evil.example:666` was
    `307 Location: http://evil.example:666/api/`: a client's Host sent back as where to go). Every
    Router in the process (Connexion makes several, in its middleware) is made without it; the gate
    (gate.py) answers the paths people do type (`/`, `/api`, `/api/ui`) with a path-only Location and
    every other trailing slash with 404. No upstream issue: it is Starlette's documented default."""

    @functools.wraps(init)
    def __init__(self, *args, redirect_slashes: bool = True, **kwargs):
        init(self, *args, redirect_slashes=False, **kwargs)

    __init__.store_api_patched = True
    return __init__


def _route_integers_as_segments() -> None:
    """Patch 1. Connexion routes a path parameter of type integer with an `int` converter, in its router
    and in Flask's: `GET /api/products/abc` matched no route (a 404, where the spec promises a 400
    naming the parameter), and Python refuses to parse more than 4300 digits (a 500). Routed as a plain
    segment, every value reaches validation: StrictURIParser reads ASCII digits of at most
    MAX_NUMBER_DIGITS, and anything else is a 400 naming the parameter.

    No upstream issue found (Connexion's int converter is by design). Scope: only routes Connexion
    makes from a spec (its own mapping of spec types to converters); the `int` converters of plain
    Flask and Starlette routes are untouched (Connexion registers its own `int` converter
    process-wide in Starlette, unchanged here)."""
    _connexion_flask.PATH_PARAMETER_CONVERTERS.pop("integer", None)
    _connexion_starlette.PATH_PARAMETER_CONVERTERS.pop("integer", None)


ORIGINAL_EXTRACT_CONTENT_TYPE = _connexion_utils.extract_content_type  # kept for the equivalence test


def extract_content_type(headers):
    """Patch 3: connexion.utils.extract_content_type, the same answer without its cost. Connexion's
    builds a `typing.Collection[typing.Tuple[...]]` alias at run time on every call (the typing
    module's cache, hashing the arguments: about 40 µs, 1% of a GET's CPU), and it is called for every
    request by the request-validation middleware and for every answer with headers by the response
    decorator. The content type as str (the first `content-type`, any case), or None; headers as
    ASGI's (bytes pairs) or a dict of str, as Connexion's accepts. No upstream issue found."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if (key.decode("latin-1") if isinstance(key, bytes) else key).lower() == "content-type":
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


class _OnceProperty(property):
    """Marks the patched FlaskOperation.fn (so that apply() is idempotent)."""


def _decorate_once(self: FlaskOperation):
    """Patch 2: FlaskOperation.fn, built once per operation and handler instead of on every request.

    Connexion 3.3's `FlaskOperation.fn` is a property: each request built a FlaskDecorator, which
    inspected the handler's signature and wrapped it three times, and a URI parser for the operation.
    All of that depends only on the handler and the operation, so here it is made once (again when
    the operation's handler is replaced); what depends on the request (its parameters and body) is
    still read per request by the same Connexion code. The handler also gets the parameters and body
    the validators checked (state.request_context), not werkzeug's second parse of the same URL and bytes.
    No upstream issue found for the per-request rebuild; Connexion 3's tracker has users reporting its
    CPU cost against 2.x in general (docs/PERFORMANCE.md)."""
    cached = self.__dict__.get("_store_api_fn")
    if cached is not None and cached[0] is self._fn:
        return cached[1]
    decorator = _Decorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
    decorated = decorator.decorate(self._fn)
    get_request = decorator.framework.get_request
    parsers: dict = {}  # the routed (middleware) operation -> its URI parser

    @functools.wraps(self._fn)
    def fn(*_args, **_kwargs):
        try:
            routed = _current_operation._get_current_object()
        except RuntimeError:
            # Flask matched a path Connexion's router did not (Starlette's mount stops at a newline in
            # the path, werkzeug's rule does not: Kludex/starlette#1058, closed unchanged): nothing
            # validated or authenticated it, so it is not served. 404, as Connexion's router said.
            raise NotFound("no such resource: " + excerpt(flask.request.path, 80)) from None
        known = parsers.get(routed)
        if known is None:
            takes_form = any(media in FORM_CONTENT_TYPES for media in routed.consumes)
            known = parsers[routed] = (routed.uri_parser_class(routed.parameters, routed.body_definition()), takes_form)
        parser, takes_form = known
        request = get_request(uri_parser=parser)
        if not takes_form:
            # No form in the operation's spec: no files either (and the gate lets no body but JSON
            # through). Connexion would still ask werkzeug to parse a form on every request (~30 µs).
            request.files = _no_files
        read = request_context(flask.request.environ["asgi.scope"])
        if "query" in read:
            request._query_params = read["query"]
            request._path_params = read["path"]
        if "body" in read:
            request._body = read["body"]
        return decorated(request)

    self.__dict__["_store_api_fn"] = (self._fn, fn)
    return fn


def _no_files() -> dict:
    return {}


# Connexion turns each parameter name into a Python one (`from` -> `from_`, camelCase -> snake_case)
# on every request, with several regular expressions per name (1.7% of a GET's CPU). The answer depends
# only on the name; names come from the spec (strict validation refuses any other), and the cache is
# bounded all the same.
_CACHED_NAMES = {
    pythonic: functools.lru_cache(maxsize=512)(pythonic),
    sanitized: functools.lru_cache(maxsize=512)(sanitized),
}


class _CachedNamesParameterDecorator(SyncParameterDecorator):
    """Connexion's parameter decorator, with its name conversion cached (above)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sanitize_fn = _CACHED_NAMES.get(self.sanitize_fn, self.sanitize_fn)


class _Decorator(FlaskDecorator):
    """Connexion's Flask decorator with the parameter decorator above."""

    @property
    def _parameter_decorator_cls(self):
        return _CachedNamesParameterDecorator
