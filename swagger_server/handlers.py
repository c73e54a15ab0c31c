"""The handler threads: Flask runs in a few threads per worker, behind a bounded, timed, first-come queue.

Connexion's middleware runs on the event loop; the Flask app (WSGI) runs in `threads` threads of this
worker. This ASGI app is the bridge between the two, and it is built for one thing: as few hand-offs
between the loop and a thread as a request allows, because each one costs the loop thread (the busiest
thread of a worker) CPU and a trip through the GIL. a2wsgi, which Connexion uses, makes five per
request (the dispatch, then one blocking `run_coroutine_threadsafe` for the response head, for each body
chunk and for the end, each waking a thread through a Python `threading.Condition`). Here there are two:

- in: the body (already read whole by the request gate, before any thread is asked for) is taken
  on the loop, and the request is put on a `queue.SimpleQueue` that a free thread takes;
- out: the thread runs the WSGI app to its end, buffering the answer (every answer of this API is a
  bounded JSON document), and hands status, headers and body back with one `call_soon_threadsafe`.

Admission control is the same object: at most `threads` requests are in Flask at once, because a thread
is free only when its request is done. Further requests wait in a FIFO queue on the loop, each for up to
`timeout` (`[API] admission_timeout`), then get `503` with `Retry-After` instead of queueing without limit. A
slot is passed straight from a finished request to the first waiter, so no newcomer overtakes it.
Requests Connexion rejects earlier (validation, auth, routing) never get here.

The environ is a2wsgi's (`build_environ`, with `asgi.scope` in it); `busy` and `waiting` feed the
handler gauges in /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import io
import json
import queue
import threading

from a2wsgi.wsgi import build_environ

_BODY = json.dumps(
    {
        "type": "/api/problems/overloaded",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "Every request handler is busy; retry shortly.",
    },
    separators=(",", ":"),
).encode()


class HandlerThreads:
    """ASGI app: `wsgi_app` in `threads` threads; at most `threads` requests at once, the next wait up to
    `timeout` seconds (first come, first served), then 503."""

    def __init__(self, wsgi_app, *, threads: int, timeout: float, retry_after: int):
        self.wsgi_app = wsgi_app
        self.threads = threads
        self.timeout = timeout
        self.retry_after = str(retry_after).encode()
        self.rejected = 0  # requests answered 503 after waiting `timeout`
        self.busy = 0  # requests in a handler thread now
        self.waiting = 0  # requests waiting for a handler thread now
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return  # lifespan and websockets are Connexion's; nothing reaches here
        loop = asyncio.get_running_loop()
        # The gate has the whole body already: taking it costs no wait, and no thread is held for it.
        body = await _read_body(scope, receive)
        if not await self._admit(loop):
            self.rejected += 1
            await self._reject(send)
            return
        try:
            environ = build_environ(scope, io.BytesIO(body))
            done = loop.create_future()
            self._start_workers()
            # The request's contextvars (Connexion's operation, scope) go with it into the thread.
            self._jobs.put((contextvars.copy_context(), environ, done, loop))
        except BaseException:
            self._release()
            raise
        # From here the slot is the thread's: it is released when the thread is done (see _finished),
        # even if this task is cancelled, so that `busy` never undercounts a running handler.
        status, headers, content = await done
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    # -- admission ------------------------------------------------------------------------------------
    async def _admit(self, loop) -> bool:
        """Take a slot: at once if one is free and nobody waits, else wait up to `timeout` in line."""
        if self.busy < self.threads and not self.waiting:
            self.busy += 1
            return True
        waiter = loop.create_future()
        self._waiters.append(waiter)
        self.waiting += 1  # counts the unresolved waiters exactly: _release and _expire resolve them
        timer = loop.call_later(self.timeout, self._expire, waiter)
        try:
            return await waiter  # True: a finishing request handed its slot over; False: timed out
        except asyncio.CancelledError:
            if waiter.cancelled():
                self.waiting -= 1  # left the line before its turn
            elif waiter.result():
                self._release()  # handed a slot just as this request went away: pass it on
            raise
        finally:
            timer.cancel()

    def _release(self) -> None:
        """A slot is free: give it to the first waiter still waiting, or count it free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.waiting -= 1
                waiter.set_result(True)  # `busy` stays: the slot changes hands
                return
        self.busy -= 1

    def _expire(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            self.waiting -= 1
            waiter.set_result(False)

    async def _reject(self, send) -> None:
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", self.retry_after),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _BODY})

    # -- the threads ----------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        if len(self._workers) >= self.threads:
            return
        with self._lock:
            while len(self._workers) < self.threads:
                worker = threading.Thread(target=self._work, name=f"handler-{len(self._workers)}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            context, environ, done, loop = job
            try:
                result = context.run(self._call, environ)
            except BaseException as exc:  # re-raised on the loop, where Connexion renders it
                result = exc
            loop.call_soon_threadsafe(self._finished, done, result)
            del job, context, environ, done, result

    def _finished(self, done: asyncio.Future, result) -> None:
        self._release()
        if done.cancelled():
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)

    def _call(self, environ) -> tuple[int, list, bytes]:
        """Run the WSGI app to its end; its answer as (status, headers, body)."""
        head: list = []
        chunks: list[bytes] = []

        def start_response(status, response_headers, exc_info=None):
            # Nothing is sent before the app returns, so a second call (with exc_info) just replaces it.
            head[:] = [status, response_headers]
            return chunks.append

        iterable = self.wsgi_app(environ, start_response)
        try:
            chunks.extend(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        status, response_headers = head
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response_headers]
        return int(status[:3]), headers, b"".join(chunks)

    def stop(self) -> None:
        """Let the threads end once the queue is empty (lifespan shutdown, after in-flight requests)."""
        for _ in self._workers:
            self._jobs.put(None)
        self._workers = []


async def _read_body(scope, receive) -> bytes:
    """The whole request body (the gate has read it, bounded, and given it its length)."""
    length = next((value for name, value in scope["headers"] if name == b"content-length"), b"0")
    if length in (b"0", b""):
        return b""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return b"".join(chunks)
