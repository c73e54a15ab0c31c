"""The request's database connection: `get_conn()` takes one on first use, teardown gives it back.

One connection per request, the same for every query in it, kept on `flask.g` (one typed object,
`g.store_db`, a RequestDb) and returned in
`teardown_appcontext`, which never commits: the pool rolls back what is left open and discards a
broken connection. Read-only controllers (`@read_only`) may be served by the replica; with one
configured, a committed write's WAL position is returned as `X-Consistency-Token`, and a read that
sends it back is served by the replica only once it has replayed that far (db/replica.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from connexion.context import context as connexion_context
from flask import g, request

from swagger_server import state as app_state
from swagger_server.db.connection import Connection, scoped_to
from swagger_server.db.database import Database
from swagger_server.db.errors import PoolError
from swagger_server.db.replica import ReplicaBehind, parse_lsn, retry_on_primary
from swagger_server.errors import ApiError
from swagger_server.observability.tracing import recording

CONSISTENCY_HEADER = "X-Consistency-Token"


@dataclass(slots=True)
class RequestDb:
    """The request's database state, on `flask.g` as `store_db`."""

    conn: Connection | None = None
    role: str = "primary"  # "primary" | "replica": which pool `conn` came from
    read_only: bool = False  # the controller is @read_only: the replica may serve it
    min_lsn: int = 0  # the WAL position the client has seen (X-Consistency-Token)


def request_db() -> RequestDb:
    """This request's RequestDb, made on first use."""
    state = g.get("store_db")
    if state is None:
        state = g.store_db = RequestDb()
    return state


class RequestScope:
    """Binds a Database to a Flask app: the per-request connection and its teardown."""

    def __init__(self, database: Database, tracing=None, on_checkout: Callable[[str, float], None] | None = None):
        self.database = database
        self.tracing = tracing  # the app's Tracing: a span for the wait, and the connection traces statements
        # Called after each checkout with the pool's name and the seconds waited (metrics, access log).
        self.on_checkout = on_checkout

    def init_app(self, flask_app) -> None:
        flask_app.teardown_appcontext(self.teardown)
        flask_app.after_request(_consistency_token)

    def get_conn(self) -> Connection:
        """The request's connection: the same one for the whole request, taken on first use.

        Raises the pool's errors (PoolTimeout, DatabaseUnavailable, ...), which the API maps to 503.
        """
        db = request_db()
        if db.conn is not None:
            return db.conn
        tracer = self.tracing.tracer() if self.tracing is not None else None
        if tracer is None or not recording():  # off, or this request is not sampled: no child spans
            return self._checkout(db)
        with tracer.start_as_current_span("db.client.connection.wait") as span:
            conn = self._checkout(db)
            span.set_attribute("db.client.connection.pool.name", db.role)
        conn.tracer = tracer
        return conn

    def _checkout(self, db: RequestDb) -> Connection:
        start = time.perf_counter()
        if db.read_only:
            conn = self._replica_conn(db.min_lsn)
            if conn is not None:
                db.conn, db.role = conn, "replica"
                self._checked_out("replica", start)
                self.database.check_schema(conn)
                conn.scope_prefix = scoped_to(bound_customer())
                return conn
        conn = self.database.pool.getconn()
        conn.track_lsn = self.database.replica is not None
        conn.commit_lsn = None
        db.conn, db.role = conn, "primary"
        self._checked_out("primary", start)
        self.database.check_schema(conn)  # nothing once current; a 503 naming `db upgrade` while behind
        conn.scope_prefix = scoped_to(bound_customer())
        return conn

    def _checked_out(self, pool: str, start: float) -> None:
        if self.on_checkout is not None:
            self.on_checkout(pool, time.perf_counter() - start)

    def _replica_conn(self, min_lsn: int) -> Connection | None:
        """A replica connection for this read, or None when the read should go to the primary."""
        replica = self.database.replica
        if replica is None or replica.route(min_lsn) is not None:
            return None
        try:
            return replica.pool.getconn()
        except PoolError as exc:
            replica.failed(exc)
            return None

    def teardown(self, exc: BaseException | None = None) -> None:
        """Give the request's connection back. Never commits: the pool rolls back what is left open."""
        db = g.get("store_db")
        if db is None or db.conn is None:
            return
        conn, role = db.conn, db.role
        db.conn, db.role = None, "primary"
        conn.tracer = None  # statements outside a request (the lag monitor's) are not traced
        conn.scope_prefix = ""  # the next user of the connection is not this caller
        conn.pending_begin = None  # a transaction() left without its exit: its BEGIN is not sent later
        pool = self.database.replica.pool if role == "replica" else self.database.pool
        pool.putconn(conn)


def bound_customer() -> int | None:
    """The customer the request's caller is bound to (an API key's, a token's claim), or None. Outside
    a spec operation (a route Connexion does not serve, a connection used by no request) no security
    ran, so no caller was verified and none is bound: the operation context is where security puts
    the caller it verified, and only there."""
    try:
        info = connexion_context.get("token_info") or {}
    except RuntimeError:  # no operation context
        return None
    return info.get("customer_id")


def _consistency_token(response):
    """After a committed write (with a replica configured): the WAL position to read it back at."""
    db = g.get("store_db")
    lsn = getattr(db.conn, "commit_lsn", None) if db is not None and db.role == "primary" else None
    if lsn:
        response.headers[CONSISTENCY_HEADER] = lsn
    return response


def read_only(func):
    """Mark a controller as read-only: it may be served by the replica (see db/replica.py).

    If the replica fails while serving it, or turns out to be behind what the client has already
    seen (ReplicaBehind, from an If-None-Match newer than its row), the whole handler runs again on
    the primary: a read-only handler has no side effects, so running it twice is safe.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        scope = app_state.current().request_scope
        replica = scope.database.replica
        if replica is None:
            return func(*args, **kwargs)
        db = request_db()
        try:
            db.min_lsn = parse_lsn(request.headers.get(CONSISTENCY_HEADER))
        except ValueError:
            raise ApiError(
                f"{CONSISTENCY_HEADER} must be a WAL position like 0/16B3748, as a write returned it",
                field=CONSISTENCY_HEADER,
            ) from None
        db.read_only = True
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if db.role != "replica":
                raise
            if isinstance(exc, ReplicaBehind):
                replica.behind()
            elif retry_on_primary(exc):
                replica.failed(exc)
            else:
                raise
            scope.teardown()  # the pool discards the broken connection
            db.read_only = False
            return func(*args, **kwargs)
        finally:
            db.read_only = False

    wrapper.read_only = True  # tests/project/test_adding_a_resource.py: every GET handler is marked, or says why not
    return wrapper


def get_conn() -> Connection:
    """The current request's database connection (see RequestScope.get_conn)."""
    return app_state.current().request_scope.get_conn()
