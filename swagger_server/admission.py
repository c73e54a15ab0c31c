"""Admission control in front of the handler threads: a bounded, timed wait instead of an unbounded queue.

Flask handlers run in a2wsgi's thread pool, whose queue has no bound and no timeout. When every thread
is busy, further requests would wait there without limit and never reach the connection pool, whose
bounded wait and 503 are the point. This middleware lets at most `threads` requests into Flask per
worker; the next ones wait (first come, first served) up to the pool timeout, then get 503 with
Retry-After. Requests Connexion rejects earlier (validation, auth, routing) never get here.
"""

from __future__ import annotations

import asyncio
import json

_BODY = json.dumps(
    {
        "type": "/api/problems/overloaded",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "Every request handler is busy; retry shortly.",
    },
    separators=(",", ":"),
).encode()


class AdmissionControl:
    """ASGI middleware: at most `limit` concurrent HTTP requests pass to `app`; waits up to `timeout`."""

    def __init__(self, app, *, limit: int, timeout: float, retry_after: int):
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.retry_after = str(retry_after)
        self._semaphore: asyncio.Semaphore | None = None  # made on first use, on the serving loop
        self.rejected = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        semaphore = self._semaphore
        if semaphore.locked():
            try:
                await asyncio.wait_for(semaphore.acquire(), self.timeout)
            except TimeoutError:
                self.rejected += 1
                await self._reject(send)
                return
        else:
            await semaphore.acquire()  # free slot: no timer, no extra task
        try:
            await self.app(scope, receive, send)
        finally:
            semaphore.release()

    async def _reject(self, send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"retry-after", self.retry_after.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
