"""The read replica: its pool, how far behind it is, and where a read-only request goes.

Routing costs no round trip: a monitor thread per process asks the replica every `check_interval`
how far behind it is (one small query, off the request path), and a read-only request reads the
answer from memory. A read goes to the primary, without an error, when the replica

- has not answered a lag check recently (down, unreachable, or every connection busy),
- is more than `max_lag` seconds behind,
- has not yet replayed the client's own last write (the `X-Consistency-Token` a write returned), or
- fails while serving the read (the read is then run again on the primary).

Read-your-writes: when a replica is configured, each committed write fetches the primary's WAL
position in the same message as its COMMIT (`COMMIT; SELECT pg_current_wal_insert_lsn()`), so it
costs no extra round trip, and returns it as `X-Consistency-Token`. The insert position, not the
write position: with synchronous_commit off the commit record may not be written out yet. A read that sends it back is served by
the replica only once the replica has replayed that far.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import psycopg2
import psycopg2.errors

from swagger_server.config import Settings
from swagger_server.db.errors import PoolError, PoolTimeout, TooManyWaiters
from swagger_server.db.pool import ConnectionPool
from swagger_server.text import first_line

logger = logging.getLogger(__name__)


# In recovery: how far replay is, and how old the last replayed transaction is while WAL is still
# waiting to be replayed (0 when everything received is replayed: an idle primary is not "lag").
_LAG_QUERY = """
    SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
           CASE WHEN NOT pg_is_in_recovery() THEN 0
                WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                ELSE COALESCE(EXTRACT(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()),
                              1e9) END::float8,
           pg_is_in_recovery()
"""

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

# Failures of a read on the replica that the primary may not have: the read is run again there.
# A statement timeout (QueryCanceled) is not one of them: the primary would time out the same way.
_RETRY_ON_PRIMARY = (
    PoolError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    psycopg2.errors.SerializationFailure,
)


class ReplicaBehind(Exception):
    """A read on the replica found a row older than a version the client has already seen (its
    If-None-Match): the replica is behind that client, and the read runs again on the primary."""


def parse_lsn(text: str | None) -> int:
    """'16/B374D848' -> an integer that orders like the LSN. ValueError if malformed; 0 for None/''."""
    if not text:
        return 0
    match = _LSN.match(text.strip())
    if not match:
        raise ValueError(text)
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def retry_on_primary(exc: BaseException) -> bool:
    """Whether a read that failed on the replica with `exc` should run again on the primary."""
    return isinstance(exc, _RETRY_ON_PRIMARY) and not isinstance(exc, psycopg2.errors.QueryCanceled)


class Replica:
    """One process's view of the replica: a pool of its own and the latest lag check."""

    def __init__(self, settings: Settings, application_name: str):
        self.max_lag = settings.replica.max_lag
        self.interval = settings.replica.check_interval
        self.safe_dsn = settings.replica_database().safe_dsn()
        self.pool = ConnectionPool(
            settings.replica_database().dsn(application_name),
            settings.replica_pool(),
            connect_timeout=settings.database.connect_timeout,
            name="replica",
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lag_s: float | None = None
        self.replay_lsn = 0
        self.in_recovery: bool | None = None
        self.checked_at: float | None = None  # monotonic time of the last successful check
        self.failed_at: float | None = None  # ... and of the last failure (check or read)
        self.last_error: str | None = None
        self._counters = {
            "replica_reads": 0,
            "primary_reads": 0,
            "lag_checks": 0,
            "lag_check_errors": 0,
            "retried_on_primary": 0,
        }
        self._fallbacks: dict[str, int] = {}
        self._thread = threading.Thread(target=self._monitor, daemon=True, name="replica-monitor")
        self._thread.start()

    # -- routing (no I/O) ----------------------------------------------------------------------------
    def route(self, min_lsn: int = 0) -> str | None:
        """None when a read may go to the replica; otherwise why it goes to the primary. Counted."""
        with self._lock:
            why = self._why_not_locked(min_lsn)
            if why is None:
                self._counters["replica_reads"] += 1
            else:
                self._count_primary_read_locked(why)
        return why

    def why_not(self, min_lsn: int = 0) -> str | None:
        """Why a read would not go to the replica now (None: it would). Not counted."""
        with self._lock:
            return self._why_not_locked(min_lsn)

    def _why_not_locked(self, min_lsn: int) -> str | None:
        if self.checked_at is None:
            return "down" if self.failed_at is not None else "not_checked"
        if self.failed_at is not None and self.failed_at > self.checked_at:
            return "down"
        if time.monotonic() - self.checked_at > 3 * self.interval + self.pool.timeout:
            return "stale"
        if self.lag_s is not None and self.lag_s > self.max_lag:
            return "lagging"
        if min_lsn > self.replay_lsn:
            return "behind_token"
        return None

    def _count_primary_read_locked(self, why: str) -> None:
        self._counters["primary_reads"] += 1
        self._fallbacks[why] = self._fallbacks.get(why, 0) + 1

    def behind(self) -> None:
        """A read found the replica behind what its client has seen (ReplicaBehind) and goes to the
        primary: counted as a primary read (reason `behind_etag`). The replica is not at fault."""
        with self._lock:
            self._counters["retried_on_primary"] += 1
            self._counters["replica_reads"] -= 1
            self._count_primary_read_locked("behind_etag")

    def failed(self, exc: BaseException) -> None:
        """A read routed to the replica failed there and goes to the primary: it is counted as a
        primary read (reason `error`) instead of a replica read. Reads go to the primary until a lag
        check succeeds again, unless the replica pool was merely busy (not a failure of the replica)."""
        with self._lock:
            self._counters["retried_on_primary"] += 1
            self._counters["replica_reads"] -= 1
            self._count_primary_read_locked("error")
            if isinstance(exc, (PoolTimeout, TooManyWaiters)):
                return
            self.failed_at = time.monotonic()
            self.last_error = first_line(exc)
        logger.warning("replica %s failed a read, retried on the primary: %s", self.safe_dsn, first_line(exc))

    # -- the monitor ---------------------------------------------------------------------------------
    def check(self) -> None:
        """One lag check: a connection from the replica pool, one query."""
        try:
            with self.pool.connection(timeout=min(self.pool.timeout, max(self.interval, 1.0))) as conn:
                with conn.cursor() as cur:
                    cur.execute(_LAG_QUERY)
                    lsn, lag, in_recovery = cur.fetchone()
        except (PoolError, psycopg2.Error) as exc:
            self._check_failed(exc)
            return
        with self._lock:
            was_down = self.failed_at is not None and (self.checked_at is None or self.failed_at > self.checked_at)
            self.replay_lsn, self.lag_s, self.in_recovery = parse_lsn(lsn), float(lag), in_recovery
            self.checked_at = time.monotonic()
            self._counters["lag_checks"] += 1
        if was_down:
            logger.warning("replica %s answers again (lag %.3f s)", self.safe_dsn, lag)

    def _check_failed(self, exc: BaseException) -> None:
        with self._lock:
            was_up = self.failed_at is None or (self.checked_at or 0) > self.failed_at
            self.failed_at = time.monotonic()
            self.last_error = first_line(exc)
            self._counters["lag_check_errors"] += 1
        if was_up:
            logger.warning("replica %s: lag check failed, reads go to the primary: %s", self.safe_dsn, first_line(exc))

    def _monitor(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # never let the monitor die: routing would go stale
                logger.exception("replica lag check crashed")
            self._stop.wait(self.interval)

    # -- reporting and lifecycle ---------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            now = time.monotonic()
            state = {
                "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
                "max_lag_s": self.max_lag,
                "in_recovery": self.in_recovery,
                "checked_s_ago": None if self.checked_at is None else round(now - self.checked_at, 3),
                "last_error": self.last_error,
                **self._counters,
                "fallbacks": dict(self._fallbacks),
            }
        why = self.why_not()
        state["routing"] = "replica" if why is None else f"primary ({why})"
        state["pool"] = self.pool.stats()
        return state

    def close(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=min(timeout, self.interval + self.pool.timeout))
        self.pool.close(timeout=timeout)
