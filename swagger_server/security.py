"""Bearer tokens with a scope, referenced from the spec's securitySchemes (x-bearerInfoFunc).

Each configured token is kept only as its SHA-256 digest (a config entry may give the digest
itself, `sha256:<hex>`), with its scope: `read` tokens may call the operations that read, `write`
tokens every operation. An operation needs `write` unless it is a GET (the spec marks each one with
`x-required-scope`, and tests/pipeline/test_security.py checks that the two agree). A known token without
the scope gets `403`, an unknown or missing one `401`.

The tokens belong to the app (swagger_server/state.py), not to the process. It runs on the event loop thread, so it is one hash and a constant-time comparison per known token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging

from connexion.security import BearerSecurityHandler

from swagger_server.config import parse_token
from swagger_server.errors import ApiError, Forbidden
from swagger_server.identity.keys import ApiKeys, KeysNotLoaded, looks_like_key
from swagger_server.identity.oidc import OidcTokens, Rejected, looks_like_jwt
from swagger_server.state import of_scope
from swagger_server.state import operation as operation_of

logger = logging.getLogger(__name__)

READ_METHODS = ("GET", "HEAD")
FIRST_READ = 1.0  # seconds the first API key a process sees waits for the keys' first read
# What each scope a configured token names grants.
GRANTS = {"read": ["read"], "write": ["read", "write"], "admin": ["admin", "read", "write"]}


class Unavailable(ApiError):
    """503 before this process has read the API keys (its first pass, at a worker's start)."""

    status, title, kind = 503, "Service Unavailable", "database-unavailable"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    """One app's accepted tokens, each kept as (sha256 digest, scope)."""

    def __init__(self, entries=()):
        parsed = []
        for entry in entries:
            scope, kind, value = parse_token(entry)
            parsed.append((bytes.fromhex(value) if kind == "sha256" else digest(value), scope))
        self.known: tuple[tuple[bytes, str], ...] = tuple(parsed)  # none: a note at start (config.log_notes)

    def check(self, token: str, needed: str) -> dict | None:
        """The token's info for a known token, None (401) for an unknown one; Forbidden (403) when the
        token's scope does not grant `needed`. Compares in constant time, with every known token."""
        candidate = digest(token)
        scope = None
        for known, known_scope in self.known:
            if hmac.compare_digest(candidate, known):
                scope = known_scope
        if scope is None:
            return None
        scopes = GRANTS[scope]
        if needed not in scopes:
            raise Forbidden(f"this token may not {needed}; {needed} access is needed")
        # `sub` identifies the caller without revealing the token (Idempotency-Keys are scoped to it).
        return {"sub": candidate.hex()[:16], "scope": scopes}


def required_scope(method: str) -> str:
    return "read" if method.upper() in READ_METHODS else "write"


def check_key(keys: ApiKeys, token: str, needed: str, operation: str, customer_scoped: frozenset):
    """An API key's info (identity/keys.py), None (401) for one that is not live; Forbidden (403) as
    `grant` says. The first key a process is shown starts its reading of the keys: that request waits
    for the first read up to FIRST_READ seconds (a coroutine, awaited by Connexion), then is
    Unavailable (503, Retry-After) if the database has not answered: never a wrong 401."""
    try:
        key = keys.check(token)
    except KeysNotLoaded:
        return _after_first_read(keys, token, needed, operation, customer_scoped)
    return _key_info(key, needed, operation, customer_scoped)


async def _after_first_read(keys: ApiKeys, token: str, needed: str, operation: str, customer_scoped: frozenset):
    await asyncio.get_running_loop().run_in_executor(None, keys.loaded.wait, FIRST_READ)
    try:
        key = keys.check(token)
    except KeysNotLoaded:
        raise Unavailable(
            "The API keys have not been read from the database yet; retry shortly.", headers={"Retry-After": "1"}
        ) from None
    return _key_info(key, needed, operation, customer_scoped)


def _key_info(key, needed: str, operation: str, customer_scoped: frozenset) -> dict | None:
    if key is None:
        return None
    scopes = set(key.scopes) | ({"read"} if "write" in key.scopes else set())
    return grant("key:" + key.id, scopes, key.customer_id, needed, operation, customer_scoped)


async def check_jwt(oidc: OidcTokens, token: str, needed: str, operation: str, customer_scoped: frozenset):
    """An OpenID provider's access token's info (identity/oidc.py), None (401) for one that does not
    verify; Forbidden (403) as `grant` says."""
    try:
        claims = await oidc.claims(token)
        customer = oidc.customer(claims)
    except Rejected as exc:
        logger.info("access token refused: %s", exc)
        return None
    return grant("oidc:" + str(claims["sub"]), oidc.scopes(claims), customer, needed, operation, customer_scoped)


def grant(caller: str, scopes: set[str], customer_id: int | None, needed: str, operation: str, customer_scoped):
    """The token info of a caller with `scopes`: Forbidden (403) when they do not grant `needed`, or
    when it is bound to a customer and `operation` is not one the spec marks `x-customer-scoped` (whose
    rows PostgreSQL limits to that customer: request_scope.py). `caller` is who asks, everywhere: its
    rate limit, its share of the threads, its idempotency keys, the access log."""
    if customer_id is not None and operation not in customer_scoped:
        raise Forbidden("this caller is bound to one customer; this operation is not open to it")
    if needed not in scopes:
        raise Forbidden(f"this caller may not {needed}; {needed} access is needed")
    return {"sub": caller, "scope": sorted(scopes), "customer_id": customer_id}


def check_token(token: str, request):
    """The spec's x-bearerInfoFunc: the token checked as an API key, an OpenID provider's access token
    (a coroutine: Connexion awaits it) or a configured token, by the app serving `request` (the
    outermost middleware puts the app's state in the request's scope)."""
    state = of_scope(request.scope)
    operation = operation_of(request.scope)
    needed = state.required_scopes.get(operation) or required_scope(request.method)
    if looks_like_key(token):
        return check_key(state.keys, token, needed, operation, state.customer_scoped)
    if state.oidc is not None and looks_like_jwt(token):
        return check_jwt(state.oidc, token, needed, operation, state.customer_scoped)
    return state.tokens.check(token, needed)


class CachedBearerHandler(BearerSecurityHandler):
    """Connexion's bearer handler (through `security_map`, for this API only), with the token
    function's signature inspected once: Connexion inspects it (inspect.signature) twice per
    authenticated request, 25 µs on the event loop, and a function's signature does not change. A
    callable that cannot be a dictionary key is inspected every time, as Connexion does (never a 500)."""

    def __init__(self):
        super().__init__()
        self._accepts: dict = {}

    def _accepts_kwarg(self, func, keyword: str) -> bool:
        try:
            key = (func, keyword)
            found = self._accepts.get(key)
        except TypeError:  # unhashable
            return BearerSecurityHandler._accepts_kwarg(func, keyword)
        if found is None:
            found = self._accepts[key] = BearerSecurityHandler._accepts_kwarg(func, keyword)
        return found


def required_scopes(spec_paths: dict) -> dict[str, str]:
    """Each secured operation's scope (the spec's x-required-scope): `read` for a GET, `write` for the
    rest, `admin` for the keys' (tests/identity/test_customer_scope.py checks the rule)."""
    return {
        op["operationId"]: op["x-required-scope"]
        for item in spec_paths.values()
        for op in item.values()
        if isinstance(op, dict) and "x-required-scope" in op
    }


def customer_scoped(spec_paths: dict) -> frozenset[str]:
    """The operations a caller bound to one customer may call (`x-customer-scoped: true`)."""
    return frozenset(
        op["operationId"]
        for item in spec_paths.values()
        for op in item.values()
        if isinstance(op, dict) and op.get("x-customer-scoped") is True
    )


def security_map() -> dict:
    """Connexion's `security_map` for one app: an OpenID provider's token comes as a bearer token too,
    read from the same header by the same function."""
    return {"bearer": CachedBearerHandler, "openIdConnect": CachedBearerHandler}


OIDC_SCHEME = "openIdConnect"


def for_deployment(spec: dict, issuer: str) -> dict:
    """The spec as this deployment serves it: the OpenID scheme names the configured provider's
    discovery document, or, with none configured, is left out with every requirement that names it
    (a client is never offered a way in that does not exist)."""
    schemes = spec.get("components", {}).get("securitySchemes", {})
    if OIDC_SCHEME not in schemes:
        return spec
    if issuer:
        schemes[OIDC_SCHEME]["openIdConnectUrl"] = issuer.rstrip("/") + "/.well-known/openid-configuration"
        return spec
    del schemes[OIDC_SCHEME]
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and "security" in op:
                op["security"] = [r for r in op["security"] if OIDC_SCHEME not in r]
    return spec
