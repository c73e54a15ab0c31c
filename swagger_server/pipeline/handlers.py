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
is free only when its request is done. Further requests wait in a queue on the loop, each for up to
`timeout` (`[API] admission_timeout`), then get `503` with `Retry-After` instead of queueing without limit. A
slot is passed straight from a finished request to the first waiter that may take it, so no newcomer
overtakes it. Requests Connexion rejects earlier (validation, auth, routing) never get here.

Two rules keep one caller from taking a worker from the others:
- **A share per caller.** A caller (its token; without one, its address) holds at most `cap` of the
  threads at once (`[API] caller_share` of them, at least one): one token's flood of slow dashboards
  leaves threads, and with them pool connections (one per request), for everybody else. Its further
  requests wait their turn in the same line; one that waited `timeout` is `429 too-many-concurrent`
  when only its caller's share held it back (a thread was free: its own doing), else `503 overloaded`
  (the server's).
- **Probes in their own lane.** They never wait behind API work, so an orchestrator never restarts a
  pod because its API is busy. Liveness (`on_loop`: no I/O, nothing that blocks) is answered on the
  event loop itself, in the request's task, without a thread: it is answered even when every thread
  is stuck, and a hand-off to a thread and back would cost more than its handler. Readiness, which may
  wait for a connection, runs on two threads of its own.

The environ is a2wsgi's (`build_environ`, with `asgi.scope` in it); `busy` and `waiting` feed the
handler gauges in /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import io
import queue
import threading

from a2wsgi.wsgi import build_environ

from swagger_server import problems
from swagger_server.state import caller
from swagger_server.state import operation as operation_of

# Rendered once, by problems.py as every problem is.
_BODY = problems.document(503, "Every request handler is busy; retry shortly.", kind="overloaded")
_SHARE_BODY = problems.document(
    429,
    "This caller already has as many requests in progress on this server as it may; retry shortly.",
    kind="too-many-concurrent",
)


def caller_of(scope) -> str:
    """Whose share and quota a request counts against: the caller security.py named (state.caller),
    else the client's address (behind a trusted proxy, the one it names)."""
    user = caller(scope)
    if user:
        return "token:" + user
    return "address:" + (scope.get("client") or ("",))[0]


class HandlerThreads:
    """ASGI app: `wsgi_app` in `threads` threads; at most `threads` requests at once, at most `cap` of them
    a caller's; the next wait up to `timeout` seconds (first come, first served among those that may
    go), then 503 (or 429 for a caller that held its share all along). `probes` (operationIds) run
    in a lane of their own; those also in `on_loop` run on the loop."""

    def __init__(
        self,
        wsgi_app,
        *,
        threads: int,
        timeout: float,
        retry_after: int,
        caller_share: float = 1.0,
        probes: frozenset[str] = frozenset(),
        on_loop: frozenset[str] = frozenset(),
    ):
        self.wsgi_app = wsgi_app
        self.threads = threads
        self.timeout = timeout
        self.retry_after = str(retry_after).encode()
        self.cap = max(1, int(threads * caller_share))  # a caller's requests in Flask at once, at most
        self.rejected = 0  # requests answered 503 after waiting `timeout`
        self.over_share = 0  # requests answered 429: their caller held its whole share for the wait
        self.busy = 0  # requests in a handler thread now
        self.waiting = 0  # requests waiting for a handler thread now
        self._inflight: dict[str, int] = {}  # caller -> its requests in a handler thread now
        self.probes = probes
        self.on_loop = on_loop & probes
        # Two threads: a readiness check may wait half a second for a connection; liveness not behind it.
        self.probe_lane = (
            HandlerThreads(wsgi_app, threads=2, timeout=timeout, retry_after=retry_after) if probes else None
        )
        self._waiters: collections.deque[tuple[asyncio.Future, str]] = collections.deque()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return  # lifespan and websockets are Connexion's; nothing reaches here
        if self.probe_lane is not None and (operation := operation_of(scope)) in self.probes:
            if operation in self.on_loop:
                body = await _read_body(scope, receive)
                environ = build_environ(scope, io.BytesIO(body))
                await _answer(send, *contextvars.copy_context().run(self._call, environ))
            else:
                await self.probe_lane(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        caller = caller_of(scope)
        # The gate has the whole body already: taking it costs no wait, and no thread is held for it.
        body = await _read_body(scope, receive)
        if not await self._admit(loop, caller):
            # 429 when only its share held it back (a thread was free), 503 when the server was full.
            if self.busy < self.threads and self._inflight.get(caller, 0) >= self.cap:
                self.over_share += 1
                await self._reject(send, 429, _SHARE_BODY)
            else:
                self.rejected += 1
                await self._reject(send, 503, _BODY)
            return
        try:
            environ = build_environ(scope, io.BytesIO(body))
            done = loop.create_future()
            self._start_workers()
            # The request's contextvars (Connexion's operation, scope) go with it into the thread.
            self._jobs.put((contextvars.copy_context(), environ, done, loop, caller))
        except BaseException:
            self._release(caller)
            raise
        # From here the slot is the thread's: it is released when the thread is done (see _finished),
        # even if this task is cancelled, so that `busy` never undercounts a running handler.
        await _answer(send, *await done)

    # -- admission ------------------------------------------------------------------------------------
    # Invariant: while a slot is free, no waiter may take it (each waiting caller holds its whole share).
    # A slot frees, and a caller's count drops, only in _release, which then hands slots over.
    async def _admit(self, loop, caller: str) -> bool:
        """Take a slot: at once if one is free and the caller is under its share, else wait up to
        `timeout` in line."""
        if self.busy < self.threads and self._inflight.get(caller, 0) < self.cap:
            self._take(caller)
            return True
        waiter = loop.create_future()
        self._waiters.append((waiter, caller))
        self.waiting += 1  # counts the unresolved waiters exactly: _hand_over and _expire resolve them
        timer = loop.call_later(self.timeout, self._expire, waiter)
        try:
            return await waiter  # True: a finishing request handed its slot over; False: timed out
        except asyncio.CancelledError:
            if waiter.cancelled():
                self.waiting -= 1  # left the line before its turn
            elif waiter.result():
                self._release(caller)  # handed a slot just as this request went away: pass it on
            raise
        finally:
            timer.cancel()

    def _take(self, caller: str) -> None:
        self.busy += 1
        self._inflight[caller] = self._inflight.get(caller, 0) + 1

    def _release(self, caller: str) -> None:
        """`caller`'s slot is free: give it (and any other free one) to the first waiters that may take one."""
        left = self._inflight[caller] - 1
        if left:
            self._inflight[caller] = left
        else:
            del self._inflight[caller]
        self.busy -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        if not self._waiters:
            return
        kept = collections.deque()
        while self._waiters:
            waiter, caller = self._waiters.popleft()
            if waiter.done():
                continue  # timed out or cancelled: already uncounted
            if self.busy < self.threads and self._inflight.get(caller, 0) < self.cap:
                self.waiting -= 1
                self._take(caller)
                waiter.set_result(True)
            else:
                kept.append((waiter, caller))
        self._waiters = kept

    def _expire(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            self.waiting -= 1
            waiter.set_result(False)

    async def _reject(self, send, status: int, body: bytes) -> None:
        headers = [
            (b"content-type", problems.PROBLEM.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", self.retry_after),
        ]
        await problems.answer(send, status, headers, body)

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
            context, environ, done, loop, caller = job
            try:
                result = context.run(self._call, environ)
            except BaseException as exc:  # re-raised on the loop, where Connexion renders it
                result = exc
            loop.call_soon_threadsafe(self._finished, done, result, caller)
            del job, context, environ, done, result

    def _finished(self, done: asyncio.Future, result, caller: str) -> None:
        self._release(caller)
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
        if self.probe_lane is not None:
            self.probe_lane.stop()


async def _answer(send, status: int, headers: list, body: bytes) -> None:
    """A whole answer: its head, then its body in one message."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
