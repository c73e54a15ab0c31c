"""The guard on swagger_server/patches.py: every framework name the patches and overrides rely on
exists, with the parameters expected; the patches are scoped (plain Flask and Starlette routes keep
their `int` converters) and fail safe (an unhashable security callable is inspected, not a 500); a
handler replaced after the first request is used."""

from __future__ import annotations

import importlib
import inspect

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
