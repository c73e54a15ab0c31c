"""Access tokens from an OpenID provider: JWTs checked against the provider's published keys.

With `[API] oidc_issuer` (and `oidc_audience`) set, a bearer token that is a JWT is verified with PyJWT
(docs/SECURITY.md says why PyJWT rather than joserfc or Authlib) against the keys of the provider's
JWKS, found through its discovery document (`<issuer>/.well-known/openid-configuration`, whose
`issuer` must be the configured one):

- only asymmetric algorithms (ALGORITHMS), and only the key's own: `alg: none`, and HS256 "signed"
  with a public key (algorithm confusion), are refused before any key is looked at;
- `exp` and `nbf` with LEEWAY seconds of leeway, `iss` and `aud` checked, `exp` and `sub` required;
- scopes from `scope` (a space-separated string) or `scp` (a list or a string): `read`, `write`
  (which reads too) and `admin`; the caller is `oidc:<sub>`; a customer from `[API] oidc_customer_claim`.

The keys are fetched off the event loop (a thread), at start and every REFRESH seconds; a token with a
kid the cache does not know makes one fetch, and every other request that meets an unknown kid
meanwhile waits for that same fetch; after a fetch, successful or not, the next waits MIN_REFETCH
seconds: a flood of made-up kids costs the provider one request per MIN_REFETCH. Each fetch gives up
after FETCH_TIMEOUT. While the provider cannot be reached, the keys fetched last keep working and an
unknown kid is 401: never a 5xx, never a wait past FETCH_TIMEOUT.

A token verified once is not verified again while it is valid (VERIFIED_CACHE entries, by its SHA-256):
the cache answers only while the token is unexpired and the key that signed it is still published,
so a retired key's tokens stop working at the next fetch of the keys, as uncached ones do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.request

import jwt
from jwt import PyJWK

logger = logging.getLogger(__name__)

ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
LEEWAY = 30
REFRESH = 300.0
MIN_REFETCH = 10.0
FETCH_TIMEOUT = 2.0
MAX_DOCUMENT = 1 << 20
# Tokens verified already, by their SHA-256: a signature costs 100-150 µs of CPU (ES256, RS256), a
# lookup 2 µs (`make bench-identity`); a client sends the same token until it expires.
VERIFIED_CACHE = 10_000  # a discovery document or a JWKS is a few kB
SCOPES = ("read", "write", "admin")


class Rejected(Exception):
    """The token is not one this service accepts (401)."""


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:  # noqa: S310 (the configured issuer)
        body = answer.read(MAX_DOCUMENT + 1)
    if len(body) > MAX_DOCUMENT:
        raise ValueError(f"{url}: larger than {MAX_DOCUMENT} bytes")
    found = json.loads(body)
    if not isinstance(found, dict):
        raise ValueError(f"{url}: not a JSON object")
    return found


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class OidcTokens:
    """One app's view of one provider's keys, in this process."""

    def __init__(self, issuer: str, audience: str, customer_claim: str, clock=time.monotonic, fetch=_get_json):
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.customer_claim = customer_claim
        self._clock = clock
        self._fetch = fetch
        self._keys: dict[str, PyJWK] = {}
        self._jwks_uri: str | None = None
        self._fetched_at = float("-inf")  # the last fetch, successful or not
        self._inflight: asyncio.Future | None = None
        # sha256(token) -> (claims, kid) of tokens verified already (VERIFIED_CACHE; dropped once
        # expired, or once their key is no longer published).
        self._verified: dict[bytes, tuple[dict, str]] = {}
        self.fetches = 0  # how many times the keys were fetched (tests, the closing note's figures)

    # -- the keys ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, PyJWK]:
        """Discovery (once) and the JWKS, in a thread."""
        if self._jwks_uri is None:
            discovery = _checked_discovery(self._fetch(self.issuer + "/.well-known/openid-configuration"), self.issuer)
            self._jwks_uri = discovery["jwks_uri"]
        keys = {}
        for entry in self._fetch(self._jwks_uri).get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            try:
                key = PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # a key of a kind this service does not use
            if key.algorithm_name in ALGORITHMS:
                keys[str(entry["kid"])] = key
        return keys

    async def refresh(self, force: bool = False) -> None:
        """Fetch the keys unless a fetch ended less than MIN_REFETCH ago (`force`: REFRESH's own pass);
        join the fetch in flight if there is one. Never raises: a failure keeps the keys read last."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        if not force and self._clock() - self._fetched_at < MIN_REFETCH:
            return
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            self.fetches += 1
            keys = await asyncio.to_thread(self._load)
            self._keys = keys
        except Exception as exc:  # unreachable, a timeout, a bad document: the cached keys stay
            logger.warning("OpenID provider keys not fetched from %s: %s", self.issuer, exc)
        finally:
            self._fetched_at = self._clock()
            self._inflight.set_result(None)
            self._inflight = None

    async def keep_fresh(self) -> None:
        """Fetch at start, then every REFRESH seconds (a task of the app's lifespan)."""
        while True:
            await self.refresh(force=True)
            await asyncio.sleep(REFRESH)

    # -- a token ----------------------------------------------------------------------------------

    async def claims(self, token: str) -> dict:
        """The verified claims of `token`; Rejected otherwise. A token verified before is taken from
        the cache (VERIFIED_CACHE) while it is unexpired and its key still published."""
        seen = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._verified.get(seen)
        if hit is not None:
            claims, kid = hit
            if kid in self._keys and time.time() <= claims["exp"] + LEEWAY:
                return claims
            del self._verified[seen]
        claims, kid = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[seen] = (claims, kid)
        return claims

    async def _verify(self, token: str) -> tuple[dict, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Rejected("not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Rejected(f"algorithm {str(alg)[:20]!r} is not accepted")
        if not isinstance(kid, str):
            raise Rejected("no key id")
        key = self._keys.get(kid)
        if key is None:
            await self.refresh()
            key = self._keys.get(kid)
            if key is None:
                raise Rejected("unknown key id")
        if key.algorithm_name != alg:
            raise Rejected("the key is not for this algorithm")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Rejected(str(exc)[:100]) from None
        if not isinstance(claims["exp"], (int, float)):
            raise Rejected("exp is not a number")
        return claims, kid

    def scopes(self, claims: dict) -> set[str]:
        granted = claims.get("scope", claims.get("scp", ""))
        words = granted.split() if isinstance(granted, str) else granted if isinstance(granted, list) else []
        found = {w for w in words if isinstance(w, str) and w in SCOPES}
        return found | ({"read"} if "write" in found else set())

    def customer(self, claims: dict) -> int | None:
        value = claims.get(self.customer_claim)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise Rejected(f"{self.customer_claim} is not a customer id")
        return int(value)


def _checked_discovery(document: dict, issuer: str) -> dict:
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise ValueError(f"the discovery document names issuer {str(document.get('issuer'))[:100]!r}")
    if not isinstance(document.get("jwks_uri"), str):
        raise ValueError("the discovery document has no jwks_uri")
    return document
