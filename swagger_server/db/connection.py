"""One PostgreSQL connection as this service uses it: bounded I/O, per-statement timeouts, explicit transactions.

Three decisions live here, all made to cost no extra round trip:
- Connections run in autocommit. A one-statement read is one round trip (psycopg2 would otherwise send
  BEGIN and, at the end, ROLLBACK: three). Writes open a transaction explicitly with `transaction()`,
  whose BEGIN goes with the block's first statement.
- The statement timeout travels with the statement: `SET LOCAL statement_timeout = N; <query>` is one
  simple-query message, so it needs no session state and works behind PgBouncer in transaction mode.
- A caller bound to one customer is enforced by PostgreSQL (row-level security, schema 020): its
  role and customer travel the same way, `SET LOCAL ROLE store_bound; SET LOCAL store.customer_id`,
  before every statement or transaction of its request (`scope_prefix`, set at checkout).
- Every socket wait has a client-side deadline (psycopg2's wait callback). libpq alone would wait forever
  on a link that accepts bytes and never answers; with the callback a stuck read fails after
  statement timeout + grace and the connection is discarded.
"""

from __future__ import annotations

import contextlib
import select
import time

import psycopg2
import psycopg2.extensions as ext
from psycopg2 import sql

_IDLE = ext.TRANSACTION_STATUS_IDLE


class DeadlineExceeded(psycopg2.OperationalError):
    """A socket wait outlived its client-side deadline; the connection is now unusable."""


def wait_with_deadline(conn: Connection) -> None:
    """psycopg2 wait callback: like psycopg2.extras.wait_select, but gives up at the connection's deadline."""
    timeout = getattr(conn, "io_timeout", None)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"no answer from the database within {timeout:.2f} s")
        fd = conn.fileno()
        if state == ext.POLL_READ:
            ready = select.select([fd], [], [], remaining)[0]
        elif state == ext.POLL_WRITE:
            ready = select.select([], [fd], [], remaining)[1]
        else:  # pragma: no cover - psycopg2 documents only the three states
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        if not ready:
            raise DeadlineExceeded(f"no answer from the database within {timeout:.2f} s")


def install_wait_callback() -> None:
    """Make every psycopg2 socket wait in this process go through `wait_with_deadline`.

    Process-wide by psycopg2's design. COPY is unavailable afterwards, so only server processes
    install it (the seed command, which uses COPY, does not).
    """
    if ext.get_wait_callback() is not wait_with_deadline:
        ext.set_wait_callback(wait_with_deadline)


def scoped_to(customer_id: int | None) -> str:
    """The prefix that makes a statement (or a transaction) a bound caller's: PostgreSQL's row-level
    security then shows it `customer_id`'s rows only (schema 020). Empty for an unbound caller."""
    if customer_id is None:
        return ""
    return f"SET LOCAL ROLE store_bound; SET LOCAL store.customer_id = '{int(customer_id)}'; "


class Cursor(ext.cursor):
    """A cursor that sends the statement timeout (and a bound caller's scope) with every statement
    outside a transaction, and with the first of each transaction; returns rows as dicts."""

    def execute(self, query, vars=None):
        if self.connection.tracer is not None:
            return _traced(self, self.connection, query, vars)
        return self._execute(query, vars)

    def _execute(self, query, vars=None):
        conn = self.connection
        prefix = conn.timeout_prefix + conn.scope_prefix
        if conn.pending_begin is not None:
            # The first statement of a transaction() carries its BEGIN: one message, no round trip of its own.
            prefix, conn.pending_begin = conn.pending_begin + conn.scope_prefix, None
        elif not prefix or conn.get_transaction_status() != _IDLE:
            return ext.cursor.execute(self, query, vars)
        query = (sql.SQL(prefix) + query) if isinstance(query, sql.Composable) else prefix + query
        return ext.cursor.execute(self, query, vars)

    def one(self) -> dict | None:
        """The next row as a dict, or None."""
        row = self.fetchone()
        return None if row is None else dict(zip([c.name for c in self.description], row, strict=True))

    def all(self) -> list[dict]:
        """The remaining rows as dicts."""
        names = [c.name for c in self.description]
        return [dict(zip(names, row, strict=True)) for row in self.fetchall()]


class Connection(ext.connection):
    """A psycopg2 connection with the attributes the pool and the wait callback need.

    `io_timeout` is the client-side deadline for one socket wait; it is `connect_timeout` while
    connecting and `statement_timeout + grace` afterwards.
    """

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float | None = None,
        io_timeout: float | None = None,
        statement_timeout_ms: int = 0,
    ):
        self.io_timeout = connect_timeout  # read by wait_with_deadline during the connect itself
        super().__init__(dsn)
        self.io_timeout = io_timeout
        self.timeout_prefix = (
            f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}; " if statement_timeout_ms > 0 else ""
        )
        # Set per checkout for a caller bound to one customer (scoped_to): every statement, or every
        # transaction, runs as store_bound with that customer (schema 020), in its own message.
        self.scope_prefix = ""
        self.cursor_factory = Cursor
        self.autocommit = True
        now = time.monotonic()
        self.created_at = now
        self.last_used = now
        self.expires_at = float("inf")  # set by the pool: max lifetime, jittered
        self.max_idle = float("inf")  # set by the pool: idle timeout, jittered
        self.backend_pid = self.info.backend_pid
        self.pending_begin: str | None = None  # a transaction() whose BEGIN goes with its first statement
        self.track_lsn = False  # set per checkout: fetch the WAL position with each COMMIT
        self.commit_lsn: str | None = None
        # Set per checkout when tracing is on: each statement is then a span (observability/tracing.py).
        self.tracer = None
        info = self.info
        self.peer = {"db.namespace": info.dbname, "server.address": info.host, "server.port": info.port}


def _traced(cursor: Cursor, conn: Connection, query, vars):
    """One statement as a CLIENT span: its text with the placeholders (never a value), its operation,
    the database and server; a failure records the exception and its SQLSTATE."""
    from opentelemetry.trace import SpanKind

    text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
    operation = text.lstrip().split(None, 1)[0].upper() if text.strip() else ""
    attributes = {"db.system.name": "postgresql", "db.operation.name": operation, "db.query.text": text, **conn.peer}
    name = f"{operation} {conn.peer['db.namespace']}"
    with conn.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            return cursor._execute(query, vars)
        except psycopg2.Error as exc:
            span.set_attribute("db.response.status_code", exc.pgcode or "")
            span.set_attribute("error.type", type(exc).__name__)
            raise


def connect(dsn: str, *, connect_timeout: float, io_timeout: float | None, statement_timeout_ms: int) -> Connection:
    """Open one connection; raise psycopg2.OperationalError (or DeadlineExceeded) if it cannot be made."""
    return Connection(
        dsn, connect_timeout=connect_timeout, io_timeout=io_timeout, statement_timeout_ms=statement_timeout_ms
    )


@contextlib.contextmanager
def transaction(conn: Connection):
    """Run the block in one transaction: COMMIT if it completes, ROLLBACK if it raises.

    BEGIN carries the statement timeout as SET LOCAL, so it holds for every statement inside, and it
    is sent with the block's first statement, in the same message (`BEGIN; SET LOCAL ...; <query>`):
    a transaction costs one round trip less than BEGIN on its own. A block that ran no statement sends
    nothing at all.
    """
    conn.pending_begin = "BEGIN; " + conn.timeout_prefix
    try:
        yield conn
    except BaseException:
        if conn.pending_begin is not None:
            conn.pending_begin = None  # nothing was sent: nothing to roll back
        elif not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.cursor().execute("ROLLBACK")
        raise
    if conn.pending_begin is not None:
        conn.pending_begin = None
        return
    with conn.cursor() as cur:
        if conn.track_lsn:
            # A replica is configured: the WAL position to read this write back at, in the same message.
            cur.execute("COMMIT; SELECT pg_current_wal_insert_lsn()::text")
            conn.commit_lsn = cur.fetchone()[0]
        else:
            cur.execute("COMMIT")
