"""The pool's errors. Every `PoolError` is retryable and carries `retry_after`, the seconds a client
should wait; the HTTP layer maps them to 503 with Retry-After. `PoolUsedAcrossFork` is a bug in
the caller (a pool from another process), not a condition to retry.
"""

from __future__ import annotations


class PoolError(Exception):
    """Base of the pool's retryable errors. `retry_after` is the seconds a client should wait."""

    retry_after = 1

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class PoolTimeout(PoolError):
    """Every connection stayed busy for the whole wait."""


class TooManyWaiters(PoolError):
    """The queue of waiting requests is full; the request is refused without waiting."""


class DatabaseUnavailable(PoolError):
    """A connection to the database could not be made (or the database is known to be down)."""


class PoolClosed(PoolError):
    """The pool has been closed (the worker is shutting down)."""


class SchemaBehind(Exception):
    """The database lacks schema files this code needs (`db upgrade` has not run, or the database is
    empty). Retryable: the answer changes once an operator runs `db upgrade`; no restart is needed."""

    retry_after = 5

    def __init__(self, missing: tuple[str, ...]):
        super().__init__(f"the database lacks {len(missing)} schema file(s) this code needs: {', '.join(missing)}")
        self.missing = missing


class PoolUsedAcrossFork(RuntimeError):
    """A pool made in one process was used in another: libpq sockets must not cross a fork."""
