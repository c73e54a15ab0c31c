"""Connexion's routing middleware, with each API's routes indexed by their first path segment.

Starlette's Router tries its routes in order, a regular expression each, until one matches: a request
for the last operation of the spec was matched against every route before it (the liveness probe, the
fifteenth, spent more time in routing than in its handler: bench/stages.py). Here each API's router
first narrows the routes to those that can match: the ones whose first segment is the request's, and
the ones whose first segment is a template, which may match anything. Their order is kept, so the
first full match, the first partial match (which becomes a 405), and everything a miss does (the
router's redirect and default) are what Starlette's router decides over all of them.

Given to Connexion through its documented `middlewares=` list, in the routing middleware's place
(app.py, `middlewares()`). Beside it, the app's route table (`Routes`): the methods of each path, for
the Allow header of a 405, and the template of each operation, for a span's name.
"""

from __future__ import annotations

import re

from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from starlette._utils import get_route_path
from starlette.routing import Match, Mount, Route, Router

from swagger_server.state import request_context


def _first_segment(path: str) -> str:
    return path.split("/", 2)[1] if path.startswith("/") else ""


def _literal_first_segment(route) -> str | None:
    first = _first_segment(route.path) if isinstance(route, Route) else "{"
    return None if "{" in first else first


class IndexedRouter(Router):
    """A Starlette Router that tries only the routes that can match the request's first segment."""

    def __init__(self, routes, *, redirect_slashes: bool, default):
        super().__init__(routes=routes, redirect_slashes=redirect_slashes, default=default)
        # Each route's literal first segment, or None for one that may match any (a template, or not a
        # plain route). A segment's candidates: its routes and the None ones, in the router's order.
        keys = [_literal_first_segment(route) for route in self.routes]
        self._anywhere = [route for route, key in zip(self.routes, keys, strict=True) if key is None]
        self._index = {
            segment: [route for route, key in zip(self.routes, keys, strict=True) if key in (segment, None)]
            for segment in set(keys) - {None}
        }

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        candidates = self._index.get(_first_segment(get_route_path(scope)), self._anywhere)
        partial = None
        for route in candidates:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return
        # No route can match: Starlette's own handling of a miss (a redirect, or the default).
        await super().app(scope, receive, send)


class IndexedRoutingMiddleware(RoutingMiddleware):
    """Connexion's RoutingMiddleware whose APIs' routers are IndexedRouters."""

    def add_api(self, *args, **kwargs) -> None:
        super().add_api(*args, **kwargs)
        for mount in self.router.routes:
            app = getattr(mount, "_base_app", None)
            if isinstance(mount, Mount) and type(app) is Router and mount.app is app:
                indexed = IndexedRouter(app.routes, redirect_slashes=app.redirect_slashes, default=app.default)
                mount._base_app = mount.app = indexed


class Identified:
    """Right after Connexion's security: the request's operation and caller, read once from what the
    router and the security found and kept in the request's context (state.operation, state.caller),
    for every layer inside and, once it returns, outside."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            extensions = scope.get("extensions", {})
            context = request_context(scope)
            context["operation"] = (extensions.get("connexion_routing", {}).get("operation_id") or "").rsplit(".", 1)[
                -1
            ]
            context["caller"] = extensions.get("connexion_context", {}).get("user")
        await self.app(scope, receive, send)


def middlewares(validate_responses: bool, after_security=None) -> list:
    """Connexion's default middleware list, with the indexed routing middleware in the routing
    middleware's place, Identified and then `after_security` (a factory of ASGI middleware, called with
    the next app) right after the security middleware, and without the response-validation middleware
    when responses are not validated (it then passes every request through after a lookup of its
    operation)."""
    stack = []
    for middleware in ConnexionMiddleware.default_middlewares:
        if middleware is RoutingMiddleware:
            stack.append(IndexedRoutingMiddleware)
        elif middleware is ResponseValidationMiddleware and not validate_responses:
            continue
        else:
            stack.append(middleware)
        if middleware is SecurityMiddleware:
            stack.append(Identified)
            if after_security is not None:
                stack.append(after_security)
    return stack


class Routes:
    """One app's path templates -> methods, so that a 405's Allow header lists the path's real ones."""

    def __init__(self, spec_paths: dict, base_path: str):
        self._routes: list[tuple[re.Pattern, tuple[str, ...]]] = []
        # operationId -> its path template (a span's name is the template, never the raw path)
        self._templates = {
            operation["operationId"]: base_path + template
            for template, item in spec_paths.items()
            for operation in item.values()
            if isinstance(operation, dict) and "operationId" in operation
        }
        for template, item in spec_paths.items():
            pattern = re.escape(base_path + template)
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
            methods = sorted(m.upper() for m in item if m in ("get", "put", "post", "patch", "delete"))
            self._routes.append((re.compile(f"^{pattern}$"), tuple(methods)))

    def template(self, operation_id: str) -> str | None:
        return self._templates.get(operation_id)

    def allowed_methods(self, path: str) -> tuple[str, ...]:
        for pattern, methods in self._routes:
            if pattern.match(path):
                return methods
        return ()
