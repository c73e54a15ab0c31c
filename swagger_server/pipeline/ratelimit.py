"""Per-caller rate limits: `[API] rate_limit` (e.g. `600/minute`) per token, or per client address without one,
in `[API] rate_limit_storage`: `memory://` (each worker counts its own, a caller gets the quota once per
worker; the `limits` library's sliding-window counter, which weighs the previous window's count, so a
caller can pass the quota by a fraction across a window's edge) or `redis://host:port/db` (one count
for every worker of every host; a moving window, exact, one round trip a request: fleet.py).

Every answer it lets through carries the IETF draft's fields (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy: "default";q=600;w=60` and `RateLimit: "default";r=<remaining>;t=<seconds to reset>`;
a refusal is `429 rate-limited` problem+json with the same fields and `Retry-After`. An operation may
cost more than one unit (the dashboard, by its date range: `costs`).

It runs on the event loop, after security (it knows the token) and before the handler threads (a
refused request never waits for one). Redis is asked by a thread of the worker's own, and never for
longer than `STORAGE_WAIT` of Redis's own time (the socket's timeouts, measured while the thread waits,
not while the loop is busy): a storage that is down or slow must not take the API down, so the limiter
then fails open (requests pass, unlimited), says so once in the log and in
`store_api_rate_limiter_degraded`, asks again every `RETRY_DEGRADED` seconds (requests or not: every
worker's gauge clears within that of the storage's return), and says so once when it is back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import limits
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from swagger_server.errors import problem_bytes
from swagger_server.pipeline.fleet import RedisWindow
from swagger_server.pipeline.handlers import caller_of, operation_of
from swagger_server.state import request_context

STORAGE_WAIT = 0.05  # seconds the storage may take to answer, then the request passes unlimited
RETRY_DEGRADED = 1.0  # seconds between tries of a storage that failed


class RateLimitConfigError(ValueError):
    """`[API] rate_limit` or `rate_limit_storage` cannot be used; the message says why."""


def parse_limit(text: str) -> limits.RateLimitItem:
    """`600/minute`, `10/second`, `1000 per hour` as the limits library reads them."""
    try:
        item = limits.parse(text)
    except ValueError:
        raise RateLimitConfigError(f"expected a rate like 600/minute, got {text!r}") from None
    return item


def storage_uri(uri: str) -> str:
    """The async storage URI for `[API] rate_limit_storage`: memory:// or redis[s]://."""
    if uri in ("memory://", "async+memory://"):
        return "async+memory://"
    if uri.startswith(("redis://", "rediss://", "redis+unix://")):
        return "async+" + uri
    raise RateLimitConfigError(f"expected memory:// or redis://host:port/db, got {uri!r}")


class RateLimits:
    """One app's limiter: the policy and its storage, in memory (inline) or in Redis (fleet.py)."""

    def __init__(
        self,
        limit: str,
        storage: str,
        *,
        on_degraded: Callable[[bool], None] | None = None,
        on_unlimited: Callable[[], None] | None = None,
    ):
        self.item = parse_limit(limit)
        self.storage_uri = storage_uri(storage)
        self.window = self.item.get_expiry()
        self.policy = f'"default";q={self.item.amount};w={self.window}'.encode()
        self.on_unlimited = on_unlimited
        self._memory: SlidingWindowCounterRateLimiter | None = None
        self._redis: RedisWindow | None = None
        if self.storage_uri == "async+memory://":
            # In memory: the synchronous storage, called inline (its calls take ~15 µs and never wait),
            # with the sliding-window counter (two counters a caller, O(1)). The asynchronous memory
            # storage's expiry task hops to a thread for every key, and the moving window keeps every
            # hit: with a thousand callers they cost a fifth of a request's CPU.
            self._memory = SlidingWindowCounterRateLimiter(storage_from_string("memory://"))
        else:
            self._redis = RedisWindow(
                self.storage_uri[len("async+") :],
                self.item.amount,
                self.window,
                wait=STORAGE_WAIT,
                retry=RETRY_DEGRADED,
                on_degraded=on_degraded,
            )

    async def hit(self, caller: str, cost: int = 1) -> tuple[bool, int, int] | None:
        """Count `cost` for `caller`: (allowed, remaining, seconds to reset), or None while the storage
        is degraded (the request passes unlimited)."""
        if self._memory is not None:
            allowed = self._memory.hit(self.item, caller, cost=cost)
            stats = self._memory.get_window_stats(self.item, caller)
            return allowed, stats.remaining, max(0, math.ceil(stats.reset_time - time.time()))
        verdict = None if self._redis.passing() else await self._redis.hit(asyncio.get_running_loop(), caller, cost)
        if verdict is None:
            self._unlimited()
        return verdict

    def _unlimited(self) -> None:
        if self.on_unlimited is not None:
            self.on_unlimited()


class RateLimited:
    """ASGI: the rate limit in front of `app` (the handler threads). Probes pass untouched."""

    def __init__(self, app, limits_: RateLimits, *, probes: frozenset[str], costs: dict[str, Callable] | None = None):
        self.app = app
        self.limits = limits_
        self.probes = probes
        self.costs = costs or {}

    async def __call__(self, scope, receive, send):
        operation = operation_of(scope)
        if scope["type"] != "http" or operation in self.probes:
            await self.app(scope, receive, send)
            return
        cost_of = self.costs.get(operation)
        verdict = await self.limits.hit(caller_of(scope), cost_of(scope) if cost_of else 1)
        if verdict is None:  # degraded: fail open
            await self.app(scope, receive, send)
            return
        allowed, remaining, reset = verdict
        # On every answer, whoever renders it (an error is rendered outside, by Connexion): the
        # outermost middleware adds what the request's context holds (observability/middleware.py).
        request_context(scope)["ratelimit"] = (
            (b"ratelimit-policy", self.limits.policy),
            (b"ratelimit", f'"default";r={remaining};t={reset}'.encode()),
        )
        if allowed:
            await self.app(scope, receive, send)
            return
        headers, body = problem_bytes(
            429,
            f"This caller's quota ({self.limits.item.amount} per {self.limits.window} s) is spent;"
            f" retry in {max(1, reset)} s.",
            {"Retry-After": str(max(1, reset))},
            kind="rate-limited",
        )
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
