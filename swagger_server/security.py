"""Bearer tokens with a scope, referenced from the spec's securitySchemes (x-bearerInfoFunc).

Each configured token is kept only as its SHA-256 digest (a config entry may give the digest
itself, `sha256:<hex>`), with its scope: `read` tokens may call the operations that read, `write`
tokens every operation. An operation needs `write` unless it is a GET (the spec marks each one with
`x-required-scope`, and tests/test_security.py checks that the two agree). A known token without
the scope gets `403`, an unknown or missing one `401`.

It runs on the event loop thread, so it is one hash and a constant-time comparison per known token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from swagger_server.config import parse_token
from swagger_server.errors import Forbidden

logger = logging.getLogger(__name__)

_tokens: tuple[tuple[bytes, str], ...] = ()  # (sha256 digest, scope)

READ_METHODS = ("GET", "HEAD")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def configure(entries) -> None:
    """Set the accepted tokens for this process (called by create_app); warn when there are none."""
    global _tokens
    parsed = []
    for entry in entries:
        scope, kind, value = parse_token(entry)
        parsed.append((bytes.fromhex(value) if kind == "sha256" else digest(value), scope))
    _tokens = tuple(parsed)
    if not _tokens:
        logger.warning(
            "no API tokens configured (API_TOKENS / [API] tokens): every operation that needs a token answers 401"
        )


def required_scope(method: str) -> str:
    return "read" if method.upper() in READ_METHODS else "write"


def check_token(token: str, request=None) -> dict | None:
    """The token's info for a known token, None (401) for an unknown one; Forbidden (403) when the
    token's scope does not allow the request's method. Compares in constant time."""
    candidate = digest(token)
    scope = None
    for known, known_scope in _tokens:
        if hmac.compare_digest(candidate, known):
            scope = known_scope
    if scope is None:
        return None
    scopes = ["read", "write"] if scope == "write" else ["read"]
    needed = required_scope(request.method if request is not None else "POST")
    if needed not in scopes:
        raise Forbidden(f"this token may only read; {needed!s} access is needed")
    # `sub` identifies the caller without revealing the token (Idempotency-Keys are scoped to it).
    return {"sub": candidate.hex()[:16], "scope": scopes}
