"""The guard on swagger_server/patches.py: every framework name the patches and overrides rely on
exists, with the parameters expected; the patches are scoped (plain Flask and Starlette routes keep
their `int` converters) and fail safe (an unhashable security callable is inspected, not a 500); a
handler replaced after the first request is used."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path

import flask
import pytest
from connexion.apps.flask import FlaskOperation
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from swagger_server import create_app, get_database, patches, security
from swagger_server.controllers.reply import reply
from tests.support.auth import AUTH
from tests.support.database import make_settings


def _resolve(owner):
    if not isinstance(owner, str):
        return owner
    module, _, name = owner.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # a class path: module.Class.Inner
        outer, _, cls = module.rpartition(".")
        return getattr(getattr(importlib.import_module(outer), cls), name)


def _has(owner, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Attributes set in __init__ (instance attributes): look for the assignment in the class's source.
    for cls in getattr(owner, "__mro__", ()):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        if f"self.{name} =" in source or f"self.{name}:" in source:
            return True
    return False


@pytest.mark.parametrize(
    "owner,name,parameters",
    patches.RELIED_ON,
    ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n, _ in patches.RELIED_ON],
)
def test_every_name_the_patches_rely_on_exists_with_the_expected_signature(owner, name, parameters):
    target = _resolve(owner)
    assert _has(target, name), f"{target!r} has no {name!r}: a patch or override in swagger_server/ relies on it"
    if parameters is None:
        return
    function = inspect.getattr_static(target, name)
    function = getattr(function, "__func__", function)  # staticmethod / classmethod
    found = tuple(p for p in inspect.signature(function).parameters if p not in ("args",))
    assert found == parameters, f"{target.__name__}.{name}{found}: expected {parameters}"


def test_the_guard_would_see_a_missing_name():
    """The observer can fail: a name that does not exist is reported."""
    with pytest.raises(AssertionError, match="has no 'no_such_method'"):
        test_every_name_the_patches_rely_on_exists_with_the_expected_signature(
            "connexion.validators.ParameterValidator", "no_such_method", None
        )
    with pytest.raises(AssertionError, match="expected"):
        test_every_name_the_patches_rely_on_exists_with_the_expected_signature(
            "connexion.validators.ParameterValidator", "validate_request", ("self",)
        )


def test_plain_flask_and_starlette_int_routes_keep_their_converters(database_url):
    """Patch 1 changes how Connexion routes the spec's integer parameters, not anyone's `int`."""
    get_database(create_app(make_settings(database_url))).close(timeout=1)  # the patches are applied
    plain = flask.Flask("plain")

    @plain.route("/n/<int:n>")
    def number(n):
        return str(n + 1)

    client = plain.test_client()
    assert client.get("/n/41").text == "42"
    assert client.get("/n/0000000000000000000041").text == "42"  # werkzeug's int, unchanged
    assert client.get("/n/abc").status_code == 404

    star = Starlette(routes=[Route("/n/{n:int}", lambda r: PlainTextResponse(str(r.path_params["n"] + 1)))])
    with TestClient(star) as c:
        assert c.get("/n/41").text == "42"
        assert c.get("/n/" + "9" * 30).text == str(10**30)  # no 20-digit cap leaks into plain routes
        assert c.get("/n/abc").status_code == 404


def test_an_unhashable_security_callable_is_inspected_not_a_500():
    class Unhashable:
        __hash__ = None

        def __call__(self, token, request=None):
            return None

    handler = security.CachedBearerHandler()
    assert handler._accepts_kwarg(Unhashable(), "request") is True
    assert handler._accepts_kwarg(Unhashable(), "required_scopes") is False
    # And a hashable one is cached: the same answer, the inspection made once.
    assert handler._accepts_kwarg(security.check_token, "request") is True
    assert (security.check_token, "request") in handler._accepts


def test_a_handler_replaced_after_the_first_request_is_used(database_url, store):
    """Patch 2 builds the operation's function once per handler, not once for ever: a handler swapped
    on the operation (as Connexion itself reads it, per request) is the one that runs."""
    app = create_app(make_settings(database_url))
    try:
        _replace_and_call(app)
    finally:
        get_database(app).close(timeout=2)  # no pool left behind for the tests after this one
    patches.apply()  # applying again changes nothing
    assert isinstance(FlaskOperation.__dict__["fn"], patches._OnceProperty)


def _replace_and_call(app) -> None:
    with app.test_client(headers=AUTH) as client:
        assert client.get("/api/health").json()["version"] != "replaced"
        operation = next(v for k, v in app.app.view_functions.items() if k.endswith("get_health"))
        original = operation._fn
        operation._fn = lambda: reply({"status": "ok", "version": "replaced"}, 200)
        try:
            assert client.get("/api/health").json()["version"] == "replaced"
        finally:
            operation._fn = original
        assert client.get("/api/health").json()["version"] != "replaced"


# -- RELIED_ON is complete: the names the code uses are found, not remembered -------------------------
FRAMEWORKS = ("connexion", "starlette", "uvicorn", "uvicorn_worker", "gunicorn", "flask", "werkzeug", "a2wsgi")
_ROOT = Path(__file__).resolve().parents[2]


def _our_modules():
    import swagger_server

    for info in pkgutil.walk_packages(swagger_server.__path__, "swagger_server."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def _framework(cls) -> bool:
    return cls.__module__.split(".")[0] in FRAMEWORKS


def _defined_in_our_code() -> set[str]:
    """Every name our code defines (functions, classes, assignments, attributes it sets)."""
    names: set[str] = set()
    for path in [*(_ROOT / "swagger_server").rglob("*.py"), _ROOT / "gunicorn.conf.py", _ROOT / "wsgi.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def relied_on_by_the_code() -> set[tuple[str, str]]:
    """(framework owner, name) for: each method or attribute a class of ours overrides on a framework
    class it extends; each attribute of its framework base it reads on `self`; each private name
    (`_x`) it reads that our code does not define; each name imported from a framework's private
    module; each attribute of gunicorn's arbiter or worker the config's hooks use."""
    found: set[tuple[str, str]] = set()
    ours = _defined_in_our_code()
    for module in _our_modules():
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            bases = [b for b in cls.__mro__[1:] if _framework(b)]
            if not bases:
                continue
            for name in vars(cls):
                if (
                    not name.startswith("__")
                    and name != "_abc_impl"
                    and (owner := next((b for b in bases if name in vars(b)), None))
                ):
                    found.add((f"{owner.__module__}.{owner.__qualname__}", name))
            own = set(vars(cls))
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and node.attr not in own
                    and not node.attr.startswith("__")
                ):
                    owner = next((b for b in bases if _has(b, node.attr)), None)
                    if owner is not None:
                        found.add((f"{owner.__module__}.{owner.__qualname__}", node.attr))
    for path in [*(_ROOT / "swagger_server").rglob("*.py"), _ROOT / "gunicorn.conf.py", _ROOT / "wsgi.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                stdlib = isinstance(node.value, ast.Name) and node.value.id in ("os", "sys")  # os._exit
                if node.attr not in ours and not stdlib:
                    found.add(("(private)", node.attr))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FRAMEWORKS:
                if any(part.startswith("_") for part in node.module.split(".")):
                    found |= {(node.module, alias.name) for alias in node.names}
            if path.name == "gunicorn.conf.py" and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner = {"server": "gunicorn.arbiter.Arbiter", "worker": "gunicorn.workers.base.Worker"}.get(
                    node.value.id
                )
                if owner and node.attr not in ours:
                    found.add((owner, node.attr))
    return found


def _listed() -> set[tuple[str, str]]:
    """(owner, name) of RELIED_ON, a class owner also under the names of the classes it inherits from
    and of the subclasses the code reads it on: a name listed on a base (AbstractRequestBodyValidator's
    `_schema`) covers it read on a subclass, and one listed on a subclass covers it found on a base."""
    listed = set()
    for owner, name, _ in patches.RELIED_ON:
        target = _resolve(owner)
        if inspect.ismodule(target):
            listed.add((target.__name__, name))
        else:  # listed on a class: found on any class it inherits from
            listed |= {(f"{cls.__module__}.{cls.__qualname__}", name) for cls in getattr(target, "__mro__", (target,))}
        listed.add(("(private)", name))
    found = relied_on_by_the_code()
    for owner, name in found:
        if owner == "(private)" or "." not in owner:
            continue
        try:
            cls = _resolve(owner)
        except (ImportError, AttributeError):
            continue
        if any((f"{base.__module__}.{base.__qualname__}", name) in listed for base in getattr(cls, "__mro__", ())):
            listed.add((owner, name))
    return listed


def test_every_framework_name_the_code_relies_on_is_in_relied_on():
    """RELIED_ON listed 60 names and missed a dozen the code used (uvicorn's
    `_unset_keepalive_if_required`, `parser`, `server_state`, Starlette's `preflight_response`, ...): a
    list kept by hand is one someone forgets. The names are found in the code; each must be listed."""
    missing = sorted(relied_on_by_the_code() - _listed())
    assert missing == [], "add each to swagger_server/patches.py RELIED_ON (owner, name, parameters or None)"


def test_the_finder_sees_what_the_list_once_missed():
    """The observer: the names the list missed before it was checked are found in the code."""
    found = relied_on_by_the_code()
    protocol = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"
    assert {(protocol, "parser"), (protocol, "_unset_keepalive_if_required"), (protocol, "shutdown")} <= found
    assert {("uvicorn.server.Server", "startup"), ("uvicorn.server.Server", "server_state")} <= found
    assert {("gunicorn.arbiter.Arbiter", "WORKERS"), ("(private)", "_get_current_object")} <= found
    assert ("starlette.middleware.cors.CORSMiddleware", "preflight_response") in found


def test_every_scope_key_of_connexion_the_code_reads_is_listed():
    """The extension keys Connexion fills are read by name; each one the code names is in SCOPE_KEYS.
    That Connexion still fills them is behaviour, proven over HTTP: the operation in the access log
    (tests/observability/test_observability.py) and the caller (tests/identity/test_keys.py)."""
    named = set()
    for path in (_ROOT / "swagger_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("connexion_"):
                named.add(node.value)
    assert named and named <= set(patches.SCOPE_KEYS), named - set(patches.SCOPE_KEYS)


def test_every_patch_has_its_behaviour_tests():
    """Every patch apply() makes, and serve_flask_with, names the behaviour tests that would fail if the
    framework changed what it does (patches.BEHAVIOUR_TESTS); each named test exists."""
    source = inspect.getsource(patches.apply)
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    made = {name for name in names if inspect.isfunction(getattr(patches, name, None))} | {"serve_flask_with"}
    assert {"_route_integers_as_segments", "_decorate_once", "_without_slash_redirects"} <= made  # the observer
    assert made <= set(patches.BEHAVIOUR_TESTS), made - set(patches.BEHAVIOUR_TESTS)
    for tests in patches.BEHAVIOUR_TESTS.values():
        for node in tests:
            path, _, name = node.partition("::")
            assert f"def {name}(" in (_ROOT / path).read_text(), f"{node} does not exist"


def test_each_operation_is_decorated_once(database_url, store, monkeypatch):
    """Patch 2: Connexion built a FlaskDecorator for every request (signature inspection, three
    wrappers); here an operation's is built at its first request, and not again."""
    built: list = []
    original = patches._Decorator.decorate
    monkeypatch.setattr(patches._Decorator, "decorate", lambda self, fn: built.append(fn) or original(self, fn))
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            for _ in range(5):
                assert client.get("/api/customers/1").status_code == 200
    finally:
        get_database(app).close(timeout=2)
    assert [fn.__name__ for fn in built] == ["get_customer"]
