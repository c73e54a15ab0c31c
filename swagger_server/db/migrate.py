"""`db upgrade` and `db status`: the SQL files in db/schema/, applied in name order while the service serves.

A migration must never stall traffic. The danger is the lock queue: an `ALTER TABLE` waiting for its
ACCESS EXCLUSIVE lock behind one long reader makes every later query on that table wait behind it,
so one slow report becomes a pile-up of every request. So (the discipline of GitLab's
`with_lock_retries`, Django's zero-downtime backends and squawk's rules):

- A file runs in one transaction under a short `lock_timeout` (what any request may wait behind it)
  and a `statement_timeout`. When the lock is not had in time, the transaction is rolled back,
  traffic flows again, and the file is retried with jittered exponential backoff until a deadline,
  with one line each time it yields, naming the oldest open transaction (the likely blocker).
- A file whose first line is `-- migrate: no-transaction` holds one statement that must run outside a
  transaction and takes only locks that traffic never waits behind: `CREATE INDEX CONCURRENTLY`,
  `DROP INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `ALTER TABLE ... VALIDATE CONSTRAINT`. It
  runs without timeouts (a concurrent build may wait for old transactions as long as it must; nobody
  waits for it), and an index that a failed concurrent build left invalid is dropped, at the failure
  and again before the next try, so a re-run never finds it "already there".
- One upgrade at a time: an advisory lock, held by each file's transaction (so a transactional file
  works through PgBouncer in transaction mode), or by the session around a no-transaction file (which
  therefore needs PostgreSQL itself). Applied files are recorded in `schema_migrations`; running it
  twice changes nothing.

The code needs every file it ships (`missing()`); files it does not know (a newer release's, after a
rollback) are tolerated: expand/contract keeps each schema readable by the release before it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.errors
import tenacity
from psycopg2 import sql

from swagger_server.config import MigrateSettings
from swagger_server.db import schema_rules
from swagger_server.text import first_line

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schema"
_LOCK_ID = 0x5707E  # any constant; it names this application's migration lock
NO_TRANSACTION = "-- migrate: no-transaction"

# What a no-transaction file may hold: statements whose locks no query of the service waits behind.
_CONCURRENT = re.compile(
    r"^\s*(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY|REINDEX\s+.*\bCONCURRENTLY\b"
    r"|ALTER\s+TABLE\s+(ONLY\s+)?[\w.\"]+\s+VALIDATE\s+CONSTRAINT)\b",
    re.IGNORECASE | re.DOTALL,
)
_INDEX_NAME = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w\"]+)", re.IGNORECASE
)
# A CREATE EXTENSION the role may not run, or for an extension the server lacks: the operator's to fix.
_EXTENSION = re.compile(r"CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(\w+)", re.IGNORECASE)
_EXTENSION_REFUSED = (
    psycopg2.errors.InsufficientPrivilege,
    psycopg2.errors.UndefinedFile,
    psycopg2.errors.FeatureNotSupported,
)


# A file's own word to the operator when the role that runs it may not (`-- if refused: ...`).
_IF_REFUSED = re.compile(r"^--\s*if refused:\s*(.+)$", re.MULTILINE)


# Worth another try: the lock was not had in time, or the transaction lost a race.
class UpgradeLockBusy(Exception):
    """Another session holds the upgrade lock (another `db upgrade`, or anything that took it)."""


_YIELDED = (
    psycopg2.errors.LockNotAvailable,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.SerializationFailure,
    UpgradeLockBusy,
)


@dataclass(frozen=True)
class Timeouts:
    """How long a migration may hold up traffic, and how long it keeps trying: [MIGRATE]'s settings
    (their defaults are the settings' own), and the backoff's cap."""

    lock_timeout: float = MigrateSettings.lock_timeout
    statement_timeout: float = MigrateSettings.statement_timeout
    deadline: float = MigrateSettings.deadline
    max_backoff: float = 5.0  # seconds between tries at most (jittered exponential from 0.25 s)


class MigrationError(Exception):
    """A schema file could not be applied; the message says which, why, and what to do."""


@dataclass(frozen=True)
class SchemaFile:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def transactional(self) -> bool:
        return not self.text.lstrip().startswith(NO_TRANSACTION)

    def statement(self) -> str:
        """The one statement of a no-transaction file; MigrationError if it holds another kind or more."""
        body = "\n".join(line.split("--", 1)[0] for line in self.text.splitlines()).strip().rstrip(";").strip()
        if ";" in body or not _CONCURRENT.match(body):
            raise MigrationError(
                f"{self.name}: a no-transaction file holds exactly one CREATE/DROP INDEX CONCURRENTLY, "
                "REINDEX ... CONCURRENTLY or ALTER TABLE ... VALIDATE CONSTRAINT"
            )
        return body

    def index_names(self) -> list[str]:
        return [name.strip('"') for name in _INDEX_NAME.findall(self.text)]


def shipped(schema_dir: Path = SCHEMA_DIR) -> list[SchemaFile]:
    """The schema files this code ships, in the order they apply."""
    return [SchemaFile(p) for p in sorted(schema_dir.glob("*.sql"))]


def applied(conn) -> dict[str, object]:
    """The files applied to the database behind `conn` (name -> applied_at); empty when it has no
    schema at all. Reads only: safe on a replica and on the service's own connections."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute("SELECT version, applied_at FROM schema_migrations")
        return dict(cur.fetchall())


def missing(applied_names, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """The files this code needs that are not applied yet (it needs every file it ships)."""
    done = set(applied_names)
    return [f.name for f in shipped(schema_dir) if f.name not in done]


def status(dsn: str, schema_dir: Path = SCHEMA_DIR) -> list[tuple[str, str]]:
    """(name, state) for every file shipped or applied: `applied <time>`, `pending`, or
    `applied, unknown to this code` (a newer release's file)."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        done = applied(conn)
    finally:
        conn.close()
    names = sorted({f.name for f in shipped(schema_dir)} | set(done))
    known = {f.name for f in shipped(schema_dir)}
    rows = []
    for name in names:
        if name not in done:
            rows.append((name, "pending"))
        else:
            when = f"applied {done[name]:%Y-%m-%d %H:%M:%S%z}"
            rows.append((name, when if name in known else when + ", unknown to this code"))
    return rows


def upgrade(
    dsn: str,
    timeouts: Timeouts = Timeouts(),
    schema_dir: Path = SCHEMA_DIR,
    say: Callable[[str], None] = logger.info,
) -> list[str]:
    """Apply the pending files; return the names applied. MigrationError when one cannot be applied
    within the deadline (nothing of that file is left behind); psycopg2.Error for a broken file."""
    files = shipped(schema_dir)
    for file in files:
        if not file.transactional:
            file.statement()  # refuse a malformed file before anything runs
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        _retrying("schema_migrations", lambda: _bootstrap(conn, timeouts), conn, timeouts, say)
        done = applied(conn)
        # Every pending file checked against the guide's rules before any of them runs.
        findings = [f for file in files if file.name not in done for f in schema_rules.check(file.name, file.text)]
        if findings:
            raise MigrationError(
                "refused before applying anything: "
                + "; ".join(str(f) for f in findings)
                + '. docs/UPGRADING.md ("Writing a schema file") says what to do instead; a statement that is'
                " safe anyway takes `-- why: <reason>` and `-- squawk-ignore <rule>` on the lines above it"
            )
        names = []
        for file in files:
            if file.name in done:
                continue
            apply = _apply_in_transaction if file.transactional else _apply_concurrently
            step = lambda file=file, apply=apply: apply(file, conn, timeouts)  # noqa: E731
            if _retrying(file.name, step, conn, timeouts, say, file.text):
                say(f"applied {file.name}")
                names.append(file.name)
        return names
    finally:
        conn.close()


def _bootstrap(conn, timeouts: Timeouts) -> None:
    """schema_migrations, made under the upgrade lock (two first upgrades at once would race on CREATE),
    waited for no longer than any other lock."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (_ms(timeouts.lock_timeout),))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _retrying(
    what: str, apply: Callable[[], bool], conn, timeouts: Timeouts, say: Callable[[str], None], text: str = ""
) -> bool:
    """Run one step (a file, whose `text` it is, or taking the upgrade lock), retrying while it yields;
    its result."""

    def yielded(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        say(
            f"{what}: yielded ({first_line(exc)}), rolled back, traffic flows; try {state.attempt_number + 1}"
            f" in {state.upcoming_sleep:.1f} s; {_blocker(conn)}"
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_YIELDED),
        wait=tenacity.wait_random_exponential(multiplier=0.25, max=timeouts.max_backoff),
        stop=tenacity.stop_after_delay(timeouts.deadline),
        before_sleep=yielded,
        reraise=True,
    )
    try:
        return retrying(apply)
    except _YIELDED as exc:
        raise MigrationError(
            f"{what}: not applied; it yielded for {timeouts.deadline:g} s ({first_line(exc)}). "
            f"End what holds the lock ({_blocker(conn)}) and run it again"
        ) from exc
    except psycopg2.OperationalError:
        raise  # the database went away (LockNotAvailable, one too, is handled above): the command line says so
    except psycopg2.Error as exc:  # the file itself is wrong for this database: nothing of it was kept
        extension = _EXTENSION.search(text)
        if extension and isinstance(exc, _EXTENSION_REFUSED):
            name = extension.group(1)
            raise MigrationError(
                f"{what}: not applied: {first_line(exc)}. This role may not create the extension {name}, or"
                f" the server does not have it: have the database's owner or an administrator run"
                f" `CREATE EXTENSION IF NOT EXISTS {name};` in this database (on a managed PostgreSQL, allow"
                f" the extension first: docs/UPGRADING.md), then run `db upgrade` again"
            ) from exc
        advice = _IF_REFUSED.search(text)
        if advice and isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            raise MigrationError(f"{what}: not applied: {first_line(exc)}. {advice.group(1).strip()}") from exc
        raise MigrationError(f"{what}: not applied: {first_line(exc)}") from exc


def _apply_in_transaction(file: SchemaFile, conn, timeouts: Timeouts) -> bool:
    """One transaction, and nothing outside it (so it works through PgBouncer in transaction mode):
    the timeouts are SET LOCAL, and the lock that serialises upgrades is a transaction-level advisory
    lock, waited for no longer than any other lock."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                (_ms(timeouts.lock_timeout), _ms(timeouts.statement_timeout)),
            )
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (file.name,))
            if cur.fetchone():  # another upgrade applied it while this one waited
                cur.execute("ROLLBACK")
                return False
            cur.execute(file.text)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (file.name,))
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
    return True


def _apply_concurrently(file: SchemaFile, conn, _timeouts: Timeouts) -> bool:
    """Outside a transaction, so with a session: the upgrade lock is a session advisory lock and the
    timeouts are off for the session (nobody waits behind these statements). This needs PostgreSQL
    itself, not PgBouncer in transaction mode (docs/UPGRADING.md)."""
    statement = file.statement()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,))
        if not cur.fetchone()[0]:  # another upgrade runs (or a session took the lock): yield, retry
            raise UpgradeLockBusy("the upgrade lock is held by another session")
        try:
            cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (file.name,))
            if cur.fetchone():
                return False
            cur.execute("SET lock_timeout = 0; SET statement_timeout = 0")
            _drop_invalid(cur, file)  # left by an earlier failed build: IF NOT EXISTS would keep it
            try:
                cur.execute(statement)
            except psycopg2.Error:
                _drop_invalid(cur, file)
                raise
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (file.name,))
        finally:
            cur.execute("RESET lock_timeout; RESET statement_timeout; SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return True


def _drop_invalid(cur, file: SchemaFile) -> None:
    for name in file.index_names():
        cur.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s AND c.relnamespace = 'public'::regnamespace AND NOT i.indisvalid",
            (name,),
        )
        row = cur.fetchone()
        if row:
            logger.warning("%s: dropping index %s, left invalid by a failed concurrent build", file.name, row[0])
            cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(row[0])))


def _blocker(conn) -> str:
    """Who holds the upgrade lock, if anyone does, else the oldest open transaction: the likely blocker."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT a.pid, a.application_name, a.state, extract(epoch FROM now() - a.backend_start)::int"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s"
                " AND l.pid <> pg_backend_pid() LIMIT 1",
                (_LOCK_ID,),
            )
            row = cur.fetchone()
    except psycopg2.Error as exc:
        return f"the lock's holder unknown ({first_line(exc)})"
    if row is not None:
        pid, app, state, seconds = row
        return (
            f"the upgrade lock is held by pid {pid} ({app or 'no application_name'}, {state}, connected {seconds} s):"
            f" another db upgrade, or a session to end with pg_terminate_backend({pid})"
        )
    return f"oldest open transaction: {_oldest_transaction(conn)}"


def _oldest_transaction(conn) -> str:
    """The oldest open transaction but ours, for the operator: who, for how long, doing what."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name, extract(epoch FROM now() - xact_start)::int, left(query, 80)"
                " FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' ORDER BY xact_start LIMIT 1"
            )
            row = cur.fetchone()
    except psycopg2.Error as exc:
        return f"unknown ({first_line(exc)})"
    if row is None:
        return "none"
    pid, app, seconds, query = row
    return f"pid {pid} ({app or 'no application_name'}), open {seconds} s, last query: {' '.join(query.split())!r}"


def _ms(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"
