"""Connections spread across the workers that share one listening socket.

The workers of one gunicorn wait on the master's listening socket. A new connection wakes them all,
and asyncio's or uvloop's server then accepts everything queued (up to `backlog`) in one go, so the
worker already running takes a burst whole: of wrk's 128 keep-alive connections one worker took 92
and the other 36, and of 32 opened one after another, 25 and 7 (tests/deploy/test_spread.py without
the share); keep-alive pins each to its worker for its life. The busier worker's queue is the
service's tail while the other core idles (docs/PERFORMANCE.md, "Connections across workers").

Here each worker (FairAcceptor) accepts while it holds no more than its share, and once it holds more,
first leaves a new connection to the workers with fewer (a `Share`: each worker's count of open
connections, and when it last looked at the socket, in a small shared-memory table the master makes
before it forks). It takes the connection after all once each of them has looked at the socket since
and left it there, or after `MAX_DEFER_SECONDS` (0.2 s) if one never looks (stuck, or stopped): a busy
peer gets its turn (a turn of a loop serving 256 connections at once is tens of milliseconds, and a
fixed 2 ms deferral left 306/206 of 512 connections), and a stuck one delays a connection by 0.2 s
at most. The share allows an eighth above the least-loaded peer, so
that under a burst a worker takes connections in batches: with one accept per turn of its loop, a
loop busy with 256 connections (a turn of ~50 ms) took 13 s to accept 256 more (wrk's timeouts).

Not `reuse_port` (a listening socket per worker, spread by the kernel's hash): under gunicorn 27 the
master then holds no socket, and a worker that stops (a reload, a restart, a crash) resets the
connections waiting in its own queue unless the host sets `net.ipv4.tcp_migrate_req=1` (then none
are lost: bench/reuse_port.py, docs/PERFORMANCE.md). With the one shared socket, a connection waits
in the master's queue until some worker takes it, across any worker's stop, on any host.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import time

log = logging.getLogger("uvicorn.error")

SLOTS = 64  # workers of one master at once (during a reload, old and new together)
FREE = -1
STARTING = -2  # claimed by a worker not accepting yet (still importing the app): not a peer yet
SLACK = 1  # connections a worker may hold above the least-loaded peer before it defers (or an eighth)
BATCH = 64  # connections accepted per readiness event at most, while under the share
DEFER_SECONDS = 0.002  # how often an over-share worker looks again at a connection it left to its peers
# ...which it takes anyway once each peer it left it to has looked at the socket since and not taken
# it, or after this long (a peer that never looks: stuck, or stopped). Longer than a turn of a busy
# loop (~75 ms with 256 connections each asking at once), so that a busy peer gets its turn.
MAX_DEFER_SECONDS = 0.2
MAX_DEFER_NS = int(MAX_DEFER_SECONDS * 1e9)
RETRY_AFTER_FAULT = 1.0  # out of descriptors or memory: stop accepting this long (as asyncio does)


class Table:
    """Each live worker's count of open connections, and when it last looked at the listening socket
    (time.monotonic_ns(), one clock for all processes), in memory shared by the master and its workers
    (anonymous and MAP_SHARED, made before the fork). One writer per slot (its worker); the master
    frees a slot when its worker exits. Reads of the others' slots are unlocked: a value a moment stale
    costs at most one connection in the wrong place."""

    def __init__(self, slots: int = SLOTS):
        self._map = mmap.mmap(-1, 16 * slots)
        self.counts = memoryview(self._map).cast("q")[:slots]
        self.looked = memoryview(self._map).cast("q")[slots:]
        for i in range(slots):
            self.counts[i] = FREE

    def claim(self, taken: set[int]) -> int | None:
        """A free slot for a worker about to fork (the master calls this), or None when all are in use
        (that worker then accepts without deferring)."""
        for i in range(len(self.counts)):
            if i not in taken:
                self.counts[i] = STARTING
                self.looked[i] = 0
                return i
        return None

    def free(self, slot: int) -> None:
        self.counts[slot] = FREE


class Share:
    """One worker's view: its own count, written to its slot, and whether it holds more than its share."""

    def __init__(self, table: Table | None = None, slot: int | None = None):
        mine = table is not None and slot is not None
        self._counts = table.counts if mine else None
        self._looked = table.looked if mine else None
        self._slot = slot
        self.open = 0

    def accepting(self) -> None:
        """From now this worker counts as a peer (until now others saw it STARTING and ignored it)."""
        if self._counts is not None:
            self._counts[self._slot] = self.open

    def opened(self) -> None:
        self.open += 1
        if self._counts is not None:
            self._counts[self._slot] = self.open

    def closed(self) -> None:
        self.open -= 1
        if self._counts is not None:
            self._counts[self._slot] = self.open

    def looking(self, now_ns: int) -> None:
        """This worker is looking at the listening socket now."""
        if self._looked is not None:
            self._looked[self._slot] = now_ns

    def over(self) -> bool:
        """More than SLACK connections (or an eighth of the peer's) above the least-loaded live peer."""
        counts = self._counts
        if counts is None:
            return False
        mine = self.open
        low = mine
        for i, n in enumerate(counts.tolist()):
            if 0 <= n < low and i != self._slot:
                low = n
        return mine > low + max(SLACK, low >> 3)

    def fewer_have_looked_since(self, since_ns: int) -> bool:
        """Every live peer holding fewer connections than this worker has looked at the socket since."""
        counts, looked, mine = self._counts, self._looked, self.open
        return all(looked[i] > since_ns for i, n in enumerate(counts.tolist()) if 0 <= n < mine and i != self._slot)


class FairAcceptor:
    """In place of asyncio's server on one listening socket (uvicorn calls close() and wait_closed())."""

    def __init__(self, loop, listener, protocol_factory, share: Share):
        self._loop = loop
        self._listener = listener  # gunicorn's socket object; its .sock is the socket
        self._sock = listener.sock
        self._fd = self._sock.fileno()
        self._factory = protocol_factory
        self._share = share
        self._deferred_at: int | None = None  # when a connection was first left to the peers
        self._closed = asyncio.Event()
        self._sock.setblocking(False)
        self._loop.add_reader(self._fd, self._ready)
        share.accepting()

    def _ready(self) -> None:
        now = time.monotonic_ns()
        self._share.looking(now)
        for _ in range(BATCH):
            if self._share.over():
                if self._deferred_at is None:
                    # Leave it to the peers with fewer; look again shortly.
                    self._deferred_at = now
                    self._pause(DEFER_SECONDS)
                    return
                waited = now - self._deferred_at
                if waited < MAX_DEFER_NS and not self._share.fewer_have_looked_since(self._deferred_at):
                    self._pause(DEFER_SECONDS)  # they have not had their turn yet
                    return
                self._deferred_at = None  # they had it, and left it: this one is taken; the next is left again
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left: a peer took it, or the client gave up first
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("accept: %s; not accepting for %.0f s", exc, RETRY_AFTER_FAULT)
                self._pause(RETRY_AFTER_FAULT)
                return
            self._share.opened()
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            task.add_done_callback(self._made)

    def _made(self, task) -> None:
        if task.cancelled() or task.exception() is not None:
            self._share.closed()  # no protocol, so no connection_lost to count it closed
            if not task.cancelled():
                log.warning("connection not set up: %r", task.exception())

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._fd)
        self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if not self._closed.is_set():
            self._loop.add_reader(self._fd, self._ready)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._loop.remove_reader(self._fd)
        self._listener.close()  # this worker's descriptor; the master's keeps the socket and its queue

    async def wait_closed(self) -> None:
        await self._closed.wait()
