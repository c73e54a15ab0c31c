"""The cheaper request path (issue 21, docs/PERFORMANCE.md) changes cost, not answers: parameters
get a fast check before jsonschema, answers are encoded by orjson, routes are tried from an index,
and a request without Origin gets its Vary header without Starlette's header objects. Each is
checked here against what it replaced."""

from __future__ import annotations

import datetime
import itertools
import json
import re
import threading
import uuid
from decimal import Decimal

from connexion.jsonifier import Jsonifier
from jsonschema import Draft4Validator

from swagger_server.app import checked_spec
from swagger_server.jsonify import FastJsonifier
from swagger_server.pipeline.gate import _with_vary_origin
from swagger_server.validation import FORMAT_CHECKER, EcmaValidator, simple_check


def _parameter_schemas() -> list[dict]:
    found = []
    for item in checked_spec()["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict):
                found += [p["schema"] for p in operation.get("parameters", []) if "schema" in p]
    return found


VALUES = [
    *range(-3, 4),
    99,
    100,
    101,
    1000,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63),
    0.5,
    1.0,
    float("nan"),
    float("inf"),
    True,
    False,
    None,
    "",
    "a",
    "ab",
    "abc",
    "x" * 100,
    "x" * 101,
    "x" * 300,
    "2026-01-01",
    "2026-02-30",
    "1",
    " 1",
    "é" * 5,
    "\U0001f600" * 3,
    "asc",
    "desc",
    "name",
    "-name",
    "price_cents",
    "a\n",
    [1],
    {"a": 1},
]


def test_the_fast_parameter_check_never_accepts_what_jsonschema_refuses():
    """For every parameter schema of the spec and a spread of values at and around its bounds, the
    fast check says True only where jsonschema finds no error, and says it for the usual case (it is
    in use, not always deferring)."""
    schemas = _parameter_schemas()
    checked = agreed = 0
    for schema in schemas:
        check = simple_check(schema)
        if check is None:
            continue
        checked += 1
        validator = EcmaValidator(schema, format_checker=FORMAT_CHECKER)
        for value in VALUES:
            valid = next(validator.iter_errors(value), None) is None
            if check(value):
                assert valid, (schema, value)
                agreed += 1
    assert checked >= 5, "the spec's id, limit and cursor parameters take the fast check"
    assert agreed >= 20


def test_the_fast_check_defers_what_it_does_not_know():
    assert simple_check({"type": "string", "format": "date"}) is None  # a format with a checker
    assert simple_check({"type": "array", "items": {"type": "integer"}}) is None
    assert simple_check({"type": "integer", "enum": [1, 2]}) is None  # 1 == True in Python
    assert simple_check({"type": "integer", "multipleOf": 2}) is None
    check = simple_check({"type": "integer", "minimum": 1, "maximum": 10, "exclusiveMaximum": True})
    assert [check(v) for v in (0, 1, 9, 10, True, 1.0)] == [False, True, True, False, False, False]
    assert Draft4Validator({"type": "integer", "minimum": 1}).is_valid(True) is False  # why bools defer


ROWS = [
    {"id": 1, "name": "Ada", "email": "ada@example.com", "created_at": datetime.datetime(2026, 1, 2, 3, 4, 5, 6)},
    {"at": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), "day": datetime.date(2026, 2, 28)},
    {"at": datetime.datetime(2026, 1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30)))},
    {"price": Decimal("12.50"), "tiny": Decimal("0.1"), "id": uuid.UUID(int=7)},
    {"big": 2**64, "keys": {1: "one"}, "list": [None, True, False, 1.5, -0.0]},
    {"text": 'naïve \u2028 </script> "quoted" \\ \x00 \x1f', "lone": "\ud800"},
    {"items": [{"id": i, "v": i * 1.25} for i in range(50)], "next_cursor": None},
]


def test_json_answers_read_back_as_the_standard_librarys():
    """The same JSON value as Connexion's encoder (compact, trailing newline) for every row shape the
    service answers, and byte for byte where the text is ASCII."""
    old, new = Jsonifier(json, separators=(",", ":")), FastJsonifier()
    compared = 0
    for row in ROWS:
        before, after = old.dumps(row), new.dumps(row)
        assert after.endswith("\n")
        assert json.loads(after) == json.loads(before), row
        if not re.search(r"\\u(?!00[01])", before) and "e-0" not in before:  # no non-ASCII, no 1e-07
            assert after == before, row
            compared += 1
    assert compared >= 4


def test_extract_content_type_answers_as_connexions_did():
    import inspect

    import connexion.utils

    from swagger_server import patches

    patches.apply()  # as create_app does (idempotent)
    assert connexion.utils.extract_content_type is patches.extract_content_type
    original = patches.ORIGINAL_EXTRACT_CONTENT_TYPE
    assert "t.Collection" in inspect.getsource(original)  # the cost the patch removes is still upstream
    cases = [
        [],
        [(b"host", b"x")],
        [(b"Content-Type", b"application/json; charset=utf-8"), (b"content-type", b"text/plain")],
        [(b"x", b"1"), (b"content-type", b"\xe9")],
        {"Content-Type": "application/json"},
        {"accept": "*/*"},
        [("content-type", "text/csv")],
    ]
    for headers in cases:
        assert patches.extract_content_type(headers) == original(headers), headers


def test_vary_origin_is_added_as_starlette_adds_it():
    assert _with_vary_origin([(b"etag", b'"1"')]) == [(b"etag", b'"1"'), (b"vary", b"Origin")]
    assert _with_vary_origin([(b"vary", b"Accept"), (b"etag", b"x"), (b"vary", b"Cookie")]) == [
        (b"vary", b"Accept, Cookie, Origin"),
        (b"etag", b"x"),
    ]


def test_answers_with_and_without_origin_carry_vary(client, store):
    plain = client.get("/api/customers/1")
    assert plain.status_code == 200 and plain.headers.get_list("vary") == ["Origin"]
    problem = client.get("/api/customers/999999")
    assert problem.status_code == 404 and problem.headers.get_list("vary") == ["Origin"]
    browser = client.get("/api/customers/1", headers={"Origin": "http://elsewhere.example"})
    assert browser.status_code == 200 and browser.headers.get_list("vary") == ["Origin"]


def test_the_fast_paths_leave_the_answers_alone_under_concurrency(client, store):
    """Many threads through the cached metric children, parameter checks and names at once: every
    answer right, every refusal the same problem as one at a time."""
    paths = [("/api/customers/1", 200), ("/api/customers/0", 400), ("/api/customers/abc", 400)]
    expected = {path: client.get(path).json() for path, _ in paths}
    failures = []

    def run(path, status):
        for _ in range(20):
            response = client.get(path)
            if response.status_code != status or response.json() != expected[path]:
                failures.append((path, response.status_code))

    threads = [threading.Thread(target=run, args=pair) for pair in itertools.islice(itertools.cycle(paths), 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not failures


def test_the_middleware_list_is_connexions_with_the_indexed_router():
    """Connexion's own list, with the indexed router in the router's place and, right after security,
    the layer that reads the operation and the caller once (Identified)."""
    from connexion.middleware.main import ConnexionMiddleware
    from connexion.middleware.response_validation import ResponseValidationMiddleware
    from connexion.middleware.routing import RoutingMiddleware
    from connexion.middleware.security import SecurityMiddleware

    from swagger_server.pipeline.routing import Identified, IndexedRoutingMiddleware, middlewares

    default = ConnexionMiddleware.default_middlewares
    validating = middlewares(validate_responses=True)
    expected = []
    for m in default:
        expected.append(IndexedRoutingMiddleware if m is RoutingMiddleware else m)
        expected += [Identified] if m is SecurityMiddleware else []
    assert validating == expected
    assert middlewares(validate_responses=False) == [m for m in validating if m is not ResponseValidationMiddleware]


def _choice(routes, scope):
    """The route Starlette's loop picks over `routes` (first full match, else first partial), or None."""
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def test_the_indexed_router_picks_the_route_starlettes_loop_picks(app):
    from starlette.routing import Mount

    from swagger_server.pipeline.routing import IndexedRouter, IndexedRoutingMiddleware, _first_segment

    assert IndexedRoutingMiddleware in app.middleware.middlewares
    with app.test_client() as client:
        assert client.get("/api/health").status_code == 200  # builds the middleware stack
    routing = next(m for m in app.middleware.middleware_stack if isinstance(m, IndexedRoutingMiddleware))
    mount = next(r for r in routing.router.routes if isinstance(r, Mount))
    router = mount.app
    assert isinstance(router, IndexedRouter)
    paths = [
        "",
        "/",
        "/customers",
        "/customers/1",
        "/customers/abc",
        "/customers/1/orders",
        "/customers/1/x",
        "/products",
        "/products/2",
        "/orders",
        "/orders/3",
        "/dashboard",
        "/health",
        "/health/ready",
        "/health/db",
        "/health/db/test",
        "/healthz",
        "/nothing",
        "/customers/",
        "//customers",
        "/ui",
    ]
    compared = 0
    for path in paths:
        for method in ("GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"):
            scope = {"type": "http", "path": "/api" + path, "root_path": "/api", "method": method}
            expected = _choice(router.routes, scope)
            candidates = router._index.get(_first_segment(path), router._anywhere)
            assert _choice(candidates, scope) is expected, (method, path)
            compared += expected is not None
    assert compared >= 40  # the observer sees routes chosen, not only misses


def test_a_template_first_segment_is_a_candidate_for_every_path():
    """The spec has no route whose first segment is a template; one such route must still be tried,
    in its place among the others, for every path."""
    from starlette.routing import Route

    from swagger_server.pipeline.routing import IndexedRouter, _first_segment

    async def endpoint(scope, receive, send):  # never called
        raise AssertionError

    routes = [
        Route("/a/{x}", endpoint, methods=["GET"]),
        Route("/{any}", endpoint, methods=["POST"]),
        Route("/b", endpoint, methods=["GET"]),
        Route("/a", endpoint, methods=["DELETE"]),
    ]
    router = IndexedRouter(routes, redirect_slashes=True, default=endpoint)
    assert router._anywhere == [routes[1]]
    compared = 0
    for path in ("/a", "/a/1", "/b", "/c", "/", "/a/1/2"):
        for method in ("GET", "POST", "DELETE", "PUT"):
            scope = {"type": "http", "path": path, "method": method}
            expected = _choice(routes, scope)
            assert _choice(router._index.get(_first_segment(path), router._anywhere), scope) is expected, (method, path)
            compared += expected is not None
    assert compared >= 10
