"""Bearer token check, referenced from the spec's securitySchemes (x-bearerInfoFunc).

It runs on the event loop thread, so it is a constant-time set lookup and nothing more.
"""
from __future__ import annotations

import hmac

_tokens: tuple[bytes, ...] = ()


def configure(tokens) -> None:
    """Set the accepted tokens for this process (called by create_app)."""
    global _tokens
    _tokens = tuple(t.encode() for t in tokens)


def check_token(token: str) -> dict | None:
    """Return the token info for a known token, None (401) otherwise. Compares in constant time."""
    candidate = token.encode()
    matched = False
    for known in _tokens:
        matched |= hmac.compare_digest(candidate, known)
    return {"sub": "api-client", "scope": []} if matched else None
