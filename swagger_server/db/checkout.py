"""What the pool keeps about each checkout and each waiting request."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from swagger_server.db.connection import Connection
from swagger_server.db.errors import PoolError


@dataclass
class Checkout:
    since: float
    thread: str
    frame: object = None  # the borrower's frame, kept only when leak detection is on
    warned: bool = False


def borrower(frame, limit: int = 12) -> tuple:
    """The innermost `limit` frames from `frame` outwards, as (code, line number) pairs."""
    out = []
    while frame is not None and len(out) < limit:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)


BORROWER_FRAMES = 6  # the innermost: where the connection was taken, and the callers that matter


def format_borrower(frames: tuple) -> str:
    """The innermost BORROWER_FRAMES of those frames, innermost first, one `file:line in function` each:
    short enough that the log line (one line: observability/logs.py) keeps them all."""
    return "".join(f"  {code.co_filename}:{line} in {code.co_name}\n" for code, line in frames[:BORROWER_FRAMES])


class Waiter:
    """A request waiting for a connection. Resolved exactly once: given a connection (`set`), failed
    (`fail`), or timed out (`expire`), each called with the pool's lock held and reporting whether it
    was the one that resolved it (psycopg_pool's WaitingClient does the same). Whoever resolves it
    also takes it out of the queue, under the same lock, so no two parties can both remove it."""

    __slots__ = ("event", "conn", "error", "thread", "frame", "resolved")

    def __init__(self, thread: str, frame):
        self.event = threading.Event()
        self.conn: Connection | None = None
        self.error: PoolError | None = None
        self.thread = thread
        self.frame = frame
        self.resolved = False

    def set(self, conn: Connection) -> bool:
        if self.resolved:
            return False
        self.resolved, self.conn = True, conn
        self.event.set()
        return True

    def fail(self, error: PoolError) -> bool:
        if self.resolved:
            return False
        self.resolved, self.error = True, error
        self.event.set()
        return True

    def expire(self) -> bool:
        """The waiter's own timeout fired: True if nobody resolved it first (it is still queued)."""
        if self.resolved:
            return False
        self.resolved = True
        return True
