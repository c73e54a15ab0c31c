"""The start-up connection budget: will workers x max_connections fit in the server's free slots?

Without this check the real cap (workers x pool size) is discovered in production as "remaining
connection slots are reserved for non-replication superuser connections".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg2

from swagger_server.config import Settings
from swagger_server.db.database import APP_PREFIX, host_label, pool_class
from swagger_server.db.queries import like_escape
from swagger_server.text import first_line

logger = logging.getLogger(__name__)


class BudgetExceeded(Exception):
    """workers x max_connections exceeds what the server can give; the message says what to change."""


@dataclass(frozen=True)
class Budget:
    needed: int
    available: int
    max_connections: int
    reserved: int
    others: int
    role_limit: int | None
    db_limit: int | None
    pgbouncer: bool = False
    server: str = "primary"  # or "replica": the budget of the read replica's own slots
    refused: str = ""  # the server refused the check's own connection for want of a slot: this why
    fleet: int = 0  # of `others`: this service's connections from other hosts

    @property
    def fits(self) -> bool:
        return self.needed <= self.available


# Role and database connection limits bind only a non-superuser (PostgreSQL exempts superusers from
# both), and what counts against them is that role's (that database's) other connections.
_QUERY = """
    WITH me AS (SELECT rolsuper, NULLIF(rolconnlimit, -1) AS limit FROM pg_roles WHERE rolname = current_user),
         -- A role without pg_read_all_stats sees other roles' sessions with backend_type and
         -- application_name hidden (NULL, ''): a row with a user and a database is a client then.
         -- This host's own workers (store-api:<this host>:<pid>) are not counted: they are being
         -- replaced. The service's workers on other hosts are: the budget is the fleet's.
         others AS (SELECT usename, datname, application_name FROM pg_stat_activity
                     WHERE COALESCE(backend_type = 'client backend', usename IS NOT NULL AND datname IS NOT NULL)
                       AND pid <> pg_backend_pid()
                       AND COALESCE(application_name, '') NOT LIKE %(ours)s ESCAPE '\\')
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int
             + COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::int,
           (SELECT count(*) FROM others),
           (SELECT CASE WHEN rolsuper THEN NULL ELSE me.limit END FROM me),
           (SELECT count(*) FROM others WHERE usename = current_user),
           (SELECT CASE WHEN (SELECT rolsuper FROM me) THEN NULL ELSE NULLIF(datconnlimit, -1) END
              FROM pg_database WHERE datname = current_database()),
           (SELECT count(*) FROM others WHERE datname = current_database()),
           (SELECT count(*) FROM others WHERE application_name LIKE %(service)s ESCAPE '\\')
"""


def _like_prefix(text: str) -> str:
    return like_escape(text) + "%"


# What PostgreSQL says when it refuses a connection for want of a slot: the budget is then zero,
# which is an answer, not an unreachable server.
_NO_SLOT = (
    "too many connections for role",
    "too many connections for database",
    "too many clients already",
    "remaining connection slots are reserved",
)


def effective_pool_size(settings: Settings, server: str = "primary") -> int:
    """Connections one worker can actually hold in one pool: one per handler thread at most."""
    size = settings.replica_max() if server == "replica" else settings.pool.max_connections
    return min(size, settings.server.threads)


def behind_pgbouncer(settings: Settings) -> Budget:
    """The budget against PgBouncer's client limit: app connections are its clients, and PgBouncer's
    own small server pool is what PostgreSQL sees (its default_pool_size is checked by its operator)."""
    limit = settings.pool.pgbouncer_max_client_conn
    available = limit - settings.pool.budget_headroom
    needed = settings.server.workers * effective_pool_size(settings)
    return Budget(needed, available, limit, 0, 0, None, None, pgbouncer=True)


def measure(settings: Settings, server: str = "primary") -> Budget:
    """Ask the server (the primary, or the replica) for its limits and current use. Raises
    psycopg2.OperationalError if unreachable.

    This host's connections of this application (application_name store-api:<host>:*) are not
    counted as used: they belong to workers that are being replaced. Other hosts' are.
    """
    database = settings.replica_database() if server == "replica" else settings.database
    try:
        conn = psycopg2.connect(database.dsn("store-api-budget-check"))
    except psycopg2.OperationalError as exc:
        if any(phrase in str(exc) for phrase in _NO_SLOT):
            needed = settings.server.workers * effective_pool_size(settings, server)
            return Budget(needed, 0, 0, 0, 0, None, None, server=server, refused=first_line(exc))
        raise
    try:
        with conn.cursor() as cur:
            cur.execute(
                _QUERY,
                {"ours": _like_prefix(f"{APP_PREFIX}{host_label()}:"), "service": _like_prefix(APP_PREFIX)},
            )
            max_conn, reserved, others, role_limit, role_others, db_limit, db_others, fleet = cur.fetchone()
    finally:
        conn.close()
    headroom = settings.pool.budget_headroom
    available = max_conn - reserved - others - headroom
    for limit, used in ((role_limit, role_others), (db_limit, db_others)):
        if limit is not None:
            available = min(available, limit - used - headroom)
    needed = settings.server.workers * effective_pool_size(settings, server)
    return Budget(needed, available, max_conn, reserved, others, role_limit, db_limit, server=server, fleet=fleet)


def explain(settings: Settings, budget: Budget) -> str:
    workers, per_worker = settings.server.workers, effective_pool_size(settings, budget.server)
    fix_pool = max(0, budget.available // workers)
    fix_workers = max(0, budget.available // per_worker)
    if budget.pgbouncer:
        return (
            f"connection budget exceeded: {workers} workers x {per_worker} connections = {budget.needed}, "
            f"but PgBouncer accepts {budget.max_connections} clients (max_client_conn) - headroom "
            f"{settings.pool.budget_headroom} = {budget.available}. Set DB_POOL_MAX_CONNECTIONS<={fix_pool} or "
            f"WEB_CONCURRENCY<={fix_workers}, or raise max_client_conn (and DB_PGBOUNCER_MAX_CLIENT_CONN)."
        )
    if budget.refused:
        return (
            f"{'replica ' if budget.server == 'replica' else ''}connection budget exceeded: {workers} workers x "
            f"{per_worker} connections = {budget.needed}, but the server refused even the check's one "
            f"connection ({budget.refused}). Raise the role's or database's CONNECTION LIMIT or the "
            f"server's max_connections, or free connections."
        )
    limits = "".join(
        [
            f", role limit {budget.role_limit}" if budget.role_limit is not None else "",
            f", database limit {budget.db_limit}" if budget.db_limit is not None else "",
        ]
    )
    if budget.server == "replica":
        return (
            f"replica connection budget exceeded: {workers} workers x {per_worker} replica connections = "
            f"{budget.needed}, but only {budget.available} are free on the replica (max_connections "
            f"{budget.max_connections} - reserved {budget.reserved} - {budget.others} used by other clients - "
            f"headroom {settings.pool.budget_headroom}{limits}). Set [REPLICA] max_connections<={fix_pool} or "
            f"WEB_CONCURRENCY<={fix_workers}, or raise the replica's max_connections."
        )
    return (
        f"connection budget exceeded: {workers} workers x {per_worker} connections = {budget.needed}, "
        f"but only {budget.available} are free (max_connections {budget.max_connections} - reserved "
        f"{budget.reserved} - {budget.others} used by other clients"
        f"{f' ({budget.fleet} of them this service on other hosts)' if budget.fleet else ''}"
        f" - headroom {settings.pool.budget_headroom}"
        f"{limits}). Set DB_POOL_MAX_CONNECTIONS<={fix_pool} or WEB_CONCURRENCY<={fix_workers}, raise "
        f"max_connections, or put PgBouncer in front."
    )


def check_connection_budget(settings: Settings, log: logging.Logger | None = None) -> Budget | None:
    """Check the budget at start-up, of the primary and, when configured, of the replica.

    Raises BudgetExceeded when `[POOL] budget_check = error`, logs a warning when `warn`; returns the
    primary's Budget, or None if skipped or the database is unreachable."""
    log = log or logger
    if settings.pool.budget_check == "off" or not pool_class(settings).holds_connections:
        return None
    if settings.replica.enabled:
        _check(settings, "replica", log)
    return _check(settings, "primary", log)


def _check(settings: Settings, server: str, log: logging.Logger) -> Budget | None:
    try:
        if server == "primary" and settings.pool.pgbouncer_max_client_conn:
            budget = behind_pgbouncer(settings)
        else:
            budget = measure(settings, server)
    except psycopg2.OperationalError as exc:
        where = (settings.replica_database() if server == "replica" else settings.database).safe_dsn()
        log.warning(
            "connection budget not checked: cannot reach %s: %s",
            where,
            first_line(exc),
        )
        return None
    if budget.fits:
        log.info(
            "connection budget%s: %d needed, %d free%s",
            " (replica)" if server == "replica" else "",
            budget.needed,
            budget.available,
            " (PgBouncer clients)" if budget.pgbouncer else "",
        )
        return budget
    message = explain(settings, budget)
    if settings.pool.budget_check == "error":
        raise BudgetExceeded(message)
    log.warning("%s", message)
    return budget
