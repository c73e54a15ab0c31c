"""Per-caller rate limits: `[API] rate_limit` (e.g. `600/minute`) per token, or per client address without one,
in `[API] rate_limit_storage`: `memory://` (each worker counts its own, a caller gets the quota once per
worker; a sliding-window counter, which weighs the previous window's count, so a caller can pass the
quota by a fraction across a window's edge: MemoryWindows) or `redis://host:port/db` (one count
for every worker of every host; a moving window, exact, one round trip a request: fleet.py).

Every answer it lets through carries the IETF draft's fields (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy: "default";q=600;w=60` and `RateLimit: "default";r=<remaining>;t=<seconds to reset>`;
a refusal is `429 rate-limited` problem+json with the same fields and `Retry-After`. An operation may
cost more than one unit, as its spec says (`x-rate-cost`: the dashboard, by its date range).

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
import urllib.parse
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import limits

from swagger_server import problems
from swagger_server.pipeline.fleet import RedisWindow
from swagger_server.pipeline.handlers import caller_of
from swagger_server.state import operation as operation_of
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
    """`[API] rate_limit_storage` checked: memory:// (this worker's memory) or redis[s]:// (fleet.py)."""
    if uri in ("memory://", "async+memory://"):
        return "memory://"
    if uri.startswith(("redis://", "rediss://", "redis+unix://")):
        return uri
    raise RateLimitConfigError(f"expected memory:// or redis://host:port/db, got {uri!r}")


class MemoryWindows:
    """The sliding-window counter (the `limits` library's algorithm: the previous window's count, weighed
    by how much of it is still inside the window, plus the current window's), per caller, in this
    worker's memory, on its event loop alone (no lock). The library's memory storage starts a timer
    thread every 10 ms that walks every key: with 1000 callers that was most of the limit's 9 % of a
    request's CPU. Here a caller's counts are one tuple, and those of callers gone quiet are swept
    every `SWEEP` hits (amortised O(1))."""

    SWEEP = 10_000

    def __init__(self, limit: int, window: int):
        self.limit, self.window = limit, window
        self.counts: dict[str, tuple[int, int, int]] = {}  # caller -> (window number, previous, current)
        self._hits = 0

    def hit(self, caller: str, cost: int, now: float | None = None) -> tuple[bool, int, int]:
        """(allowed, remaining, seconds to reset), as the library's hit and get_window_stats answer."""
        now = time.time() if now is None else now
        window, number = self.window, int(now // self.window)
        entry = self.counts.get(caller)
        if entry is None or entry[0] < number - 1:
            previous = current = 0
        elif entry[0] == number - 1:
            previous, current = entry[2], 0
        else:
            previous, current = entry[1], entry[2]
        # The library's arithmetic, to the bit: its verdicts and reset times are this one's.
        previous_ttl = (1 - (((now - window) / window) % 1)) * window if previous else 0.0
        current_ttl = (1 - ((now / window) % 1)) * window + window
        weighted = previous * previous_ttl / window + current
        allowed = cost <= self.limit and math.floor(weighted) + cost <= self.limit
        if allowed:
            current += cost
            weighted = previous * previous_ttl / window + current
        self.counts[caller] = (number, previous, current)
        self._hits += 1
        if self._hits % self.SWEEP == 0:
            self.counts = {k: v for k, v in self.counts.items() if v[0] >= number - 1}
        reset = math.inf
        if previous:
            reset = previous_ttl % (window / previous)
        if current:
            reset = min(reset, current_ttl % window)
        seconds = 0 if reset == math.inf else max(0, math.ceil((now + reset) - now))
        return allowed, max(0, self.limit - math.floor(weighted)), seconds


def costs_from_spec(paths: dict) -> dict[str, Callable]:
    """operationId -> what one of its requests costs, by the spec's `x-rate-cost` (1 where it has none):
    a number, or a date range's cost `{days-per-unit, from, to, default-days, most}` (the names of the
    query parameters bounding the range, both inclusive; the range when `from` is absent)."""
    costs: dict[str, Callable] = {}
    for item in paths.values():
        for operation in item.values():
            if not isinstance(operation, dict) or "x-rate-cost" not in operation:
                continue
            rule, name = operation["x-rate-cost"], operation["operationId"]
            if isinstance(rule, int) and rule >= 1:
                costs[name] = lambda _scope, cost=rule: cost
                continue
            query = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "query"}
            keys = {"days-per-unit", "from", "to", "default-days", "most"}
            if not isinstance(rule, dict) or set(rule) != keys or not {rule["from"], rule["to"]} <= query:
                raise RateLimitConfigError(
                    f"x-rate-cost of {name}: a number >= 1, or {sorted(keys)} naming two of its query parameters"
                )
            costs[name] = _range_cost(rule)
    return costs


def _range_cost(rule: dict) -> Callable:
    per, most, span = rule["days-per-unit"], rule["most"], timedelta(days=rule["default-days"] - 1)

    def cost(scope) -> int:
        """Read from the query before the handler runs."""
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            end = date.fromisoformat(query[rule["to"]][0]) if rule["to"] in query else datetime.now(UTC).date()
            start = date.fromisoformat(query[rule["from"]][0]) if rule["from"] in query else end - span
        except (ValueError, OverflowError):
            return 1
        return max(1, min(math.ceil(((end - start).days + 1) / per), most))

    return cost


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
        self._memory: MemoryWindows | None = None
        self._redis: RedisWindow | None = None
        if self.storage_uri == "memory://":
            self._memory = MemoryWindows(self.item.amount, self.window)
        else:
            self._redis = RedisWindow(
                self.storage_uri,
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
            return self._memory.hit(caller, cost)
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
        await problems.send(
            send,
            429,
            f"This caller's quota ({self.limits.item.amount} per {self.limits.window} s) is spent;"
            f" retry in {max(1, reset)} s.",
            {"Retry-After": str(max(1, reset))},
            kind="rate-limited",
        )
