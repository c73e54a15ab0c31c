"""The pool's declared interface: what every pool offers (`Pool`), the shape of its statistics
(`PoolStats`), and the counters in them. `ConnectionPool` and `NullPool` both satisfy it, and nothing
above the database layer needs to know which one it holds."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol, TypedDict, runtime_checkable

from swagger_server.db.connection import Connection

# Cumulative counters in stats(). EVENTS are the ones exported as events (all but the totals).
COUNTERS = (
    "requests",
    "waited",
    "wait_ms",
    "timeouts",
    "rejected",
    "unavailable",
    "connections_opened",
    "connections_closed",
    "connection_errors",
    "reconnects",
    "pings",
    "discarded_dead",
    "recycled",
    "rollbacks",
    "leaks",
)
EVENTS = tuple(name for name in COUNTERS if name not in ("requests", "wait_ms"))
TIMINGS_KEPT = 10_000  # between two metric syncs (one a second), per pool
# psycopg_pool's `configure`: called with each new connection before anyone gets it; if it raises, the
# connection is closed and the attempt counts as a failed connect.
Configure = Callable[[Connection], None]


class PoolStats(TypedDict):
    """A pool's snapshot: sizes, waiting requests, database state, and every counter of COUNTERS."""

    name: str
    pid: int
    min: int
    max: int
    size: int  # open connections: idle + in use
    idle: int
    in_use: int
    waiting: int
    opening: int
    database_up: bool
    last_error: str | None
    down_for_s: float
    requests: int
    waited: int
    wait_ms: int
    timeouts: int
    rejected: int
    unavailable: int
    connections_opened: int
    connections_closed: int
    connection_errors: int
    reconnects: int
    pings: int
    discarded_dead: int
    recycled: int
    rollbacks: int
    leaks: int


def empty_stats(name: str, pid: int, min_size: int, max_size: int) -> PoolStats:
    """Stats with every size and counter at zero (each pool fills in its own)."""
    stats = {
        "name": name,
        "pid": pid,
        "min": min_size,
        "max": max_size,
        "size": 0,
        "idle": 0,
        "in_use": 0,
        "waiting": 0,
        "opening": 0,
        "database_up": True,
        "last_error": None,
        "down_for_s": 0.0,
    }
    stats.update(dict.fromkeys(COUNTERS, 0))
    return stats  # type: ignore[return-value]


@runtime_checkable
class Pool(Protocol):
    """What the rest of the service may ask of a pool."""

    name: str
    pid: int
    timeout: float
    holds_connections: bool  # counted by the start-up connection budget check

    def getconn(self, timeout: float | None = None) -> Connection: ...

    def putconn(self, conn: Connection) -> None: ...

    def connection(self, timeout: float | None = None) -> contextlib.AbstractContextManager[Connection]: ...

    def close(self, timeout: float = 5.0) -> None: ...

    @property
    def closed(self) -> bool: ...

    def stats(self) -> PoolStats: ...

    def wait_ready(self, timeout: float = 10.0) -> None: ...

    def drain_timings(self) -> list[tuple[str, float]]: ...


class PoolVerbs:
    """What every pool offers on top of its own `getconn` and `putconn`, and its timings: how long
    opening (`create`) and holding (`use`) connections took, kept until the metrics take them."""

    _timings: deque

    def _timed(self, kind: str, seconds: float) -> None:
        self._timings.append((kind, seconds))  # a deque's append is atomic; bounded by its maxlen

    def drain_timings(self) -> list[tuple[str, float]]:
        """The timings recorded since the last call (at most TIMINGS_KEPT, the newest)."""
        return [self._timings.popleft() for _ in range(len(self._timings))]

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """`with pool.connection() as conn:` a connection for the block, given back however it ends."""
        conn = self.getconn(timeout)  # type: ignore[attr-defined]
        try:
            yield conn
        finally:
            self.putconn(conn)  # type: ignore[attr-defined]
