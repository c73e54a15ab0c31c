"""`Database`: one app's access to PostgreSQL in the current process: its pool, its replica, their health.

The pool is made per process: by gunicorn's `post_fork` hook (through wsgi.py), or lazily on first
use. If the process has forked since (the pid changed), a fresh pool is made and the parent's is
left untouched: libpq sockets must not cross a fork. `[POOL] mode` is decided here, once: `pool`
gives a ConnectionPool, `none` a NullPool (a connection per checkout), with the same verbs.

Nothing here knows about HTTP; the request scope (one connection per request) is
swagger_server/request_scope.py.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psycopg2

from swagger_server.config import PoolSettings, Settings
from swagger_server.db import migrate, unicode
from swagger_server.db.errors import SchemaBehind
from swagger_server.db.null_pool import NullPool
from swagger_server.db.pool import ConnectionPool, keep_inherited
from swagger_server.db.replica import Replica
from swagger_server.db.rollups import Roller

logger = logging.getLogger(__name__)

WARN_USAGE = 0.8  # health is `warning` from this share of connections in use
SCHEMA_RECHECK = 1.0  # seconds between schema checks while the database is behind


def pool_class(settings: Settings) -> type:
    """The pool for `[POOL] mode`: the one place that reads it."""
    return NullPool if settings.pool.mode == "none" else ConnectionPool


def make_pool(
    dsn: str, settings: Settings, pool_settings: PoolSettings | None = None, name: str = "primary", configure=None
):
    return pool_class(settings)(
        dsn,
        pool_settings or settings.pool,
        connect_timeout=settings.database.connect_timeout,
        name=name,
        configure=configure,
    )


APP_PREFIX = "store-api:"


def host_label() -> str:
    """This host's name in application_name: $HOSTNAME (a Kubernetes pod's name) or the system's,
    its last 40 characters (a pod name's unique suffix is at its end; application_name keeps 63)."""
    name = os.environ.get("HOSTNAME") or socket.gethostname() or "localhost"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name)[-40:]


def application_name(pid: int | None = None) -> str:
    """`store-api:<host>:<pid>`: which host and which worker holds a connection, for operators and
    for the fleet-wide budget check (which counts the other hosts' connections)."""
    return f"{APP_PREFIX}{host_label()}:{os.getpid() if pid is None else pid}"


class Database:
    """This process's pools for one app. `pool` and `replica` open them on first use in each process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.mode = settings.pool.mode
        self._pool = None
        self._replica: Replica | None = None
        self._lock = threading.Lock()
        # The schema files this code ships but the database lacks: None until first asked, () once current.
        self._schema_missing: tuple[str, ...] | None = None
        self._schema_checked = float("-inf")
        self.unicode: str | None = None  # the database's Unicode version, once the first connection said

    def application_name(self) -> str:
        """What `pg_stat_activity.application_name` shows for this process: host and worker pid."""
        return application_name()

    def open(self):
        """Create this process's pool (and replica) now (gunicorn post_fork). Idempotent."""
        with self._lock:
            if self._pool is not None and self._pool.pid == os.getpid() and not self._pool.closed:
                return self._pool
            if self._pool is not None and self._pool.pid != os.getpid():
                logger.warning("fork detected: pool of process %d replaced in process %d", self._pool.pid, os.getpid())
                # Not closed, not even locked: its lock may have been held by a parent thread at the
                # fork, and its sockets are the parent's. Kept referenced so it is never collected.
                keep_inherited(self._pool)
                if self._replica is not None:
                    keep_inherited(self._replica.pool)
            # Each new connection tells what schema the database has, until it is current: the check
            # is paid by the connector, not by a request.
            self._pool = make_pool(
                self.settings.database.dsn(self.application_name()), self.settings, configure=self._see_schema
            )
            # A replica needs a real pool (and a lag monitor); the `none` baseline has neither.
            self._replica = (
                Replica(self.settings, self.application_name())
                if self.settings.replica.enabled and pool_class(self.settings) is ConnectionPool
                else None
            )
            # The dashboard's roller (db/rollups.py), on this pool, when this process runs one.
            interval = self.settings.api.dashboard_rollup_interval
            if interval > 0 and isinstance(self._pool, ConnectionPool):
                Roller(self._pool, interval).start()
            return self._pool

    @property
    def pool(self):
        """This process's pool, opened on first use; possibly closed (shutting down: getconn raises PoolClosed)."""
        pool = self._pool
        if pool is None or pool.pid != os.getpid():
            return self.open()
        return pool

    @property
    def replica(self) -> Replica | None:
        """This process's replica (pool and lag monitor), or None when none is configured."""
        if not self.settings.replica.enabled:
            return None
        _ = self.pool  # opens both in a new process
        return self._replica

    def pools(self) -> list:
        """This process's open pools (primary first), for metrics; empty before the first use."""
        if self._pool is None or self._pool.pid != os.getpid():
            return []
        return [self._pool] + ([self._replica.pool] if self._replica is not None else [])

    @property
    def schema_current(self) -> bool:
        """The database has every schema file this code ships (as last seen)."""
        return self._schema_missing == ()

    def check_schema(self, conn) -> None:
        """Raise SchemaBehind while the database lacks a schema file this code ships (newer files are
        fine: expand/contract). The pool's connector asks as it opens connections (`_see_schema`), so
        a request normally finds the answer known: once current, this costs nothing and nothing asks
        again in this process (a schema does not go backwards). While behind, or not known yet, it asks
        on `conn` at most once a second, so a `db upgrade` run later is noticed without a restart."""
        if self._schema_missing == ():
            return
        if time.monotonic() - self._schema_checked >= SCHEMA_RECHECK:
            self._see_schema(conn)
        if self._schema_missing:
            raise SchemaBehind(self._schema_missing)

    def _see_schema(self, conn) -> None:
        """Ask the database which schema files it has (one query), unless already known current. The
        first answer is logged, and each change. The first connection also compares the database's
        Unicode version with the text rule's (db/unicode.py), once per process."""
        if self.unicode is None:
            self.unicode = unicode.compare(conn) or "unknown"
        if self._schema_missing == ():
            return
        now = time.monotonic()
        try:
            missing = tuple(migrate.missing(migrate.applied(conn)))
        except psycopg2.OperationalError:
            raise  # the connection is gone: the pool's business
        except psycopg2.Error as exc:  # e.g. a role that may not read schema_migrations: serve unchecked
            with self._lock:
                self._schema_missing, self._schema_checked = (), now
            logger.warning("the schema check is off: %s (grant SELECT on schema_migrations to turn it on)", exc)
            return
        with self._lock:
            before, self._schema_missing, self._schema_checked = self._schema_missing, missing, now
        if missing and before != missing:
            logger.warning(
                "the database schema is behind this code: %s not applied; API calls answer 503 until"
                " `python -m swagger_server db upgrade` runs",
                ", ".join(missing),
            )
        elif not missing and before:
            logger.info("the database schema is current now: serving")

    def close(self, timeout: float | None = None) -> None:
        """Close this process's pools (worker shutdown). Idempotent."""
        with self._lock:
            pool, replica = self._pool, self._replica
        timeout = self.settings.server.graceful_timeout if timeout is None else timeout
        if replica is not None:
            replica.close(timeout=timeout)
        if pool is not None:
            pool.close(timeout=timeout)  # a pool inherited from a parent is only kept, not closed

    def health(self) -> dict:
        """The pools' statistics with a status: `error` while the database is unreachable, `warning`
        under pressure (80% of connections in use, requests waiting, reads sent away from the replica)."""
        stats = self.pool.stats()
        warnings = []
        usage = stats["in_use"] / stats["max"] if stats["max"] else 0.0
        if not stats["database_up"]:
            warnings.append(f"database unreachable for {stats['down_for_s']:.1f} s: {stats['last_error']}")
        if usage >= WARN_USAGE:
            warnings.append(f"{stats['in_use']} of {stats['max']} connections in use ({usage:.0%})")
        if stats["waiting"]:
            warnings.append(f"{stats['waiting']} request(s) waiting for a connection")
        body = {"mode": self.mode, "usage": round(usage, 3), "warnings": warnings, "pool": stats}
        replica = self.replica
        if replica is not None:
            body["replica"] = replica.stats()
            if body["replica"]["routing"] != "replica":
                warnings.append(
                    f"reads go to the {body['replica']['routing']}: replica "
                    f"{body['replica']['last_error'] or 'lag ' + str(body['replica']['lag_s']) + ' s'}"
                )
        status = "error" if not stats["database_up"] else ("warning" if warnings else "healthy")
        return {"status": status, **body}
