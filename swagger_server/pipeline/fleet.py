"""The fleet's rate limit in Redis: one round trip a request, deadlines the storage is measured by.

Every worker has one thread of its own that talks to Redis with a blocking client. The event loop
hands it each request's hit (a queue) and awaits the answer (a future); the thread sends every hit
waiting at that moment in one pipeline, one script a hit, and settles their futures with one call to
the loop. So:

- a request costs one round trip to Redis (the script takes the hit and answers the window's state:
  the `limits` library's moving window asks twice, `hit` then `get_window_stats`), and a flood costs
  one round trip per batch, not per request;
- the deadline (`wait`, the socket's timeout) is measured by the kernel while the thread waits in
  `recv` without the GIL: a loop kept busy by a flood delays when the answer is read, never whether
  it came in time. On the event loop (redis-py's asyncio client, as before), a flood on 256
  connections made the 50 ms deadline expire on answers that had come in a millisecond, and the
  limiter failed open for everyone (858 to 2 590 of one token's requests served against 600);
- the storage's state (down since when, back after how long) changes in this thread only, in order,
  with the time it happened: one line when it fails, one when it answers again, true durations;
- every hit is timed by Redis's clock (`TIME` in the script), so the hosts of a fleet whose clocks
  differ still count one window.

While the storage is down, the loop does not queue hits (they pass unlimited until the next try is
due) and the thread asks Redis (`PING`) every `retry` seconds, requests or not, so every worker's
gauge clears within that of Redis's return.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable

import redis

from swagger_server.text import first_line

logger = logging.getLogger(__name__)

# KEYS[1]: the caller's list of hit times, newest first; ARGV: limit, window (s), cost.
# Answers {allowed (0/1), hits in the window after this one, the oldest of them, now}.
MOVING_WINDOW = """
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local since = now - window
local allowed = 0
if cost <= limit then
    local entry = redis.call('LINDEX', KEYS[1], limit - cost)
    if not (entry and tonumber(entry) >= since) then
        local stamp = string.format('%.6f', now)
        for i = 1, cost do
            redis.call('LPUSH', KEYS[1], stamp)
        end
        redis.call('LTRIM', KEYS[1], 0, limit - 1)
        redis.call('EXPIRE', KEYS[1], math.ceil(window))
        allowed = 1
    end
end
local low, high, found = 0, redis.call('LLEN', KEYS[1]) - 1, -1
while low <= high do
    local mid = math.floor((low + high) / 2)
    if tonumber(redis.call('LINDEX', KEYS[1], mid)) >= since then
        found = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
local oldest = now
if found >= 0 then
    oldest = tonumber(redis.call('LINDEX', KEYS[1], found))
end
return {allowed, found + 1, string.format('%.6f', oldest), string.format('%.6f', now)}
"""

KEY_PREFIX = "store-api:ratelimit:"


def client_url(uri: str) -> str:
    """redis-py's URL for `[API] rate_limit_storage` (the `limits` library's spelling of a socket)."""
    return "unix://" + uri[len("redis+unix://") :] if uri.startswith("redis+unix://") else uri


def _connection(url: str, wait: float) -> redis.Connection:
    """A redis-py connection to `url` (TCP, TLS or a Unix socket), every connect and read bounded by
    `wait`, no retries; it connects when first used."""
    kwargs = redis.connection.parse_url(url)
    kind = kwargs.pop("connection_class", redis.Connection)
    return kind(**kwargs, socket_timeout=wait, socket_connect_timeout=wait, retry_on_timeout=False)


class RedisWindow:
    """One process's moving windows in Redis (module docstring). `hit` is awaited on the event loop."""

    def __init__(
        self,
        uri: str,
        limit: int,
        window: int,
        *,
        wait: float,
        retry: float,
        on_degraded: Callable[[bool], None] | None = None,
    ):
        self.url = client_url(uri)
        self.limit, self.window = limit, window
        self.wait, self.retry = wait, retry
        self.on_degraded = on_degraded
        self.down_since: float | None = None  # set and cleared by the thread only
        self.next_try = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = 0  # the process whose thread serves the queue (a forked worker starts its own)
        self._thread = threading.Thread()  # not started: the first hit starts the real one
        self._lock = threading.Lock()

    def passing(self) -> bool:
        """True while the storage is down and no try is due: the request passes unlimited, unqueued."""
        return self.down_since is not None and time.monotonic() < self.next_try

    async def hit(self, loop, caller: str, cost: int) -> tuple[bool, int, int] | None:
        """(allowed, remaining, seconds to reset), or None when the storage failed (pass unlimited)."""
        if self._pid != os.getpid() or not self._thread.is_alive():  # forked, or (a bug) the thread died
            self._start()
        future = loop.create_future()
        self._queue.put((KEY_PREFIX + caller, cost, future, loop))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid() and self._thread.is_alive():
                return
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()  # a forked worker's own (the parent's may hold hits)
            self._thread = threading.Thread(target=self._serve, name="ratelimit-redis", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    # --- the thread ---

    def _serve(self) -> None:
        # One connection, made when first used, held by this thread alone; one that failed or timed
        # out is dropped (it may hold a late answer) and the next try connects anew. redis-py's
        # connection is used directly: its pipeline object cost twice the CPU for one command.
        connection = _connection(self.url, self.wait)
        sha = None
        while True:
            try:
                first = self._queue.get(timeout=self.retry if self.down_since is not None else None)
            except queue.Empty:  # down, and no request came: ask by itself
                self._probe(connection)
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            verdicts: list = [None] * len(batch)
            try:
                sha, verdicts = self._run(connection, sha, batch)
            except Exception as exc:  # noqa: BLE001 - any failure of the storage: fail open, said once
                self._failed(exc, connection)
            else:
                self._answered()
            finally:
                self._settle(batch, verdicts)

    def _run(self, connection: redis.Connection, sha: str | None, batch: list) -> tuple[str, list]:
        if sha is None:
            connection.send_command("SCRIPT", "LOAD", MOVING_WINDOW)
            sha = connection.read_response().decode()
        commands = [("EVALSHA", sha, 1, key, self.limit, self.window, cost) for key, cost, _f, _l in batch]
        connection.send_packed_command(connection.pack_commands(commands))
        try:
            replies = [connection.read_response() for _ in batch]
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it: load it, ask again
            connection.disconnect()
            return self._run(connection, None, batch)
        verdicts = []
        for allowed, count, oldest, now in replies:
            reset = max(0, math.ceil(float(oldest) + self.window - float(now))) if count else 0
            verdicts.append((bool(allowed), max(0, self.limit - int(count)), reset))
        return sha, verdicts

    def _probe(self, connection: redis.Connection) -> None:
        """While down and idle: does the storage answer (PING)?"""
        try:
            connection.send_command("PING")
            connection.read_response()
        except Exception as exc:  # noqa: BLE001 - a storage that fails is what is watched for
            self._failed(exc, connection)
            return
        self._answered()

    def _failed(self, exc: BaseException, connection: redis.Connection) -> None:
        connection.disconnect()
        now = time.monotonic()
        self.next_try = now + self.retry
        if self.down_since is None:
            self.down_since = now
            logger.error("rate limiter: storage failed (%s); requests pass unlimited until it answers", first_line(exc))
            if self.on_degraded is not None:
                self.on_degraded(True)

    def _answered(self) -> None:
        if self.down_since is None:
            return
        logger.warning(
            "rate limiter: storage answers again after %.1f s; limits enforced", time.monotonic() - self.down_since
        )
        self.down_since = None
        if self.on_degraded is not None:
            self.on_degraded(False)

    @staticmethod
    def _settle(batch: list, verdicts: list) -> None:
        by_loop: dict = {}
        for (_key, _cost, future, loop), verdict in zip(batch, verdicts, strict=True):
            by_loop.setdefault(loop, []).append((future, verdict))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs)
            except RuntimeError:  # that loop is closed: nobody waits
                pass


def _resolve(pairs: list) -> None:
    for future, verdict in pairs:
        if not future.done():  # a request that went away (cancelled) waits for nothing
            future.set_result(verdict)
