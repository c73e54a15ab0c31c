"""Per-caller rate limits: `[API] rate_limit` (e.g. `600/minute`) per token, or per client address without one,
counted by the `limits` library in `[API] rate_limit_storage`: `memory://` (each worker counts its own,
a caller gets the quota once per worker; the sliding-window counter, which weighs the previous window's
count, so a caller can pass the quota by a fraction across a window's edge) or `redis://host:port/db`
(one count for every worker of every host; the moving window, exact).

Every answer it lets through carries the IETF draft's fields (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy: "default";q=600;w=60` and `RateLimit: "default";r=<remaining>;t=<seconds to reset>`;
a refusal is `429 rate-limited` problem+json with the same fields and `Retry-After`. An operation may
cost more than one unit (the dashboard, by its date range: `costs`).

It runs on the event loop, after security (it knows the token) and before the handler threads (a
refused request never waits for one). Redis is asked asynchronously, and never for longer than
`STORAGE_WAIT` (its client's connect and read timeouts): a storage that is down or slow must not take the API down, so the limiter then fails
open (requests pass, unlimited), says so once in the log and in `store_api_rate_limiter_degraded`,
asks again after `RETRY_DEGRADED` seconds (with a request, or, with none, by a task on the worker's
loop: every worker's gauge clears within that of the storage's return), and says so once when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import limits
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from swagger_server.errors import problem_bytes
from swagger_server.pipeline.handlers import caller_of, operation_of
from swagger_server.state import request_context
from swagger_server.text import first_line

logger = logging.getLogger(__name__)

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
    """One app's limiter: the policy, the storage (made on first use in each process and event loop),
    and whether the storage is degraded."""

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
        self.on_degraded = on_degraded
        self.on_unlimited = on_unlimited
        self.degraded_since: float | None = None
        self.next_try = 0.0
        self._limiter: MovingWindowRateLimiter | None = None
        self._loop = None
        self._watching: asyncio.Task | None = None  # while degraded: _watch, on the worker's loop

    def _get_limiter(self):
        if self.storage_uri == "async+memory://":
            # In memory: the synchronous storage, called inline (its calls take ~15 µs and never wait),
            # with the sliding-window counter (two counters a caller, O(1)). The asynchronous memory
            # storage's expiry task hops to a thread for every key, and the moving window keeps every
            # hit: with a thousand callers they cost a fifth of a request's CPU.
            if self._limiter is None:
                self._limiter = SlidingWindowCounterRateLimiter(storage_from_string("memory://"))
            return self._limiter
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._loop is not loop:  # a worker's loop (a test client's are several)
            options = {}
            if self.storage_uri.startswith("async+redis"):
                # redis-py's asyncio client, every connect and read bounded by its own socket timeouts
                # (no task per request, as asyncio.wait_for would make).
                options = {
                    "implementation": "redispy",
                    "socket_connect_timeout": STORAGE_WAIT,
                    "socket_timeout": STORAGE_WAIT,
                }
            storage = storage_from_string(self.storage_uri, wrap_exceptions=True, **options)
            self._limiter, self._loop = MovingWindowRateLimiter(storage), loop
        return self._limiter

    async def hit(self, caller: str, cost: int = 1) -> tuple[bool, int, int] | None:
        """Count `cost` for `caller`: (allowed, remaining, seconds to reset), or None while the storage
        is degraded (the request passes unlimited)."""
        now = time.monotonic()
        if self.degraded_since is not None and now < self.next_try:
            self._unlimited()
            return None
        limiter = self._get_limiter()
        try:
            if isinstance(limiter, SlidingWindowCounterRateLimiter):
                allowed = limiter.hit(self.item, caller, cost=cost)
                stats = limiter.get_window_stats(self.item, caller)
            else:
                allowed = await limiter.hit(self.item, caller, cost=cost)
                stats = await limiter.get_window_stats(self.item, caller)
        except Exception as exc:  # noqa: BLE001 - any storage failure: fail open, said once
            self._degraded(now, exc)
            self._unlimited()
            return None
        self._recovered()
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return allowed, stats.remaining, reset

    def _recovered(self) -> None:
        """The storage answered: limits hold again, said once (by a request or by the watch)."""
        if self.degraded_since is None:
            return
        logger.warning(
            "rate limiter: storage answers again after %.1f s; limits enforced", time.monotonic() - self.degraded_since
        )
        self.degraded_since = None
        if self.on_degraded is not None:
            self.on_degraded(False)

    async def _watch(self) -> None:
        """While degraded, ask the storage every RETRY_DEGRADED seconds whether it answers, requests or
        not: a worker that no request reaches after Redis is back must not say degraded for ever (its
        gauge, and the alert on it, would stay up)."""
        try:
            while self.degraded_since is not None:
                await asyncio.sleep(RETRY_DEGRADED)
                if self.degraded_since is None:
                    return
                try:
                    answers = await self._get_limiter().storage.check()
                except Exception:  # noqa: BLE001 - a storage that fails is what is watched for
                    answers = False
                if answers:
                    self._recovered()
                else:
                    self._limiter = None  # a new client for the next try
        finally:
            self._watching = None

    def _unlimited(self) -> None:
        if self.on_unlimited is not None:
            self.on_unlimited()

    def _degraded(self, now: float, exc: BaseException) -> None:
        self.next_try = now + RETRY_DEGRADED
        if self.degraded_since is None:
            self.degraded_since = now
            reason = first_line(exc) if str(exc) else type(exc).__name__
            logger.error("rate limiter: storage failed (%s); requests pass unlimited until it answers", reason)
            if self.on_degraded is not None:
                self.on_degraded(True)
        self._limiter = None  # a new client on the next try: a cancelled call may leave this one broken
        if self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch())


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
