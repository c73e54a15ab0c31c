"""`db upgrade` and `db status` (swagger_server/db/migrate.py) against a real PostgreSQL: a migration
yields to traffic instead of piling it up, gives up at its deadline naming the blocker, runs concurrent
builds outside a transaction and leaves no invalid index behind; squawk lints every schema file."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from harness.waiting import wait_until
from swagger_server.__main__ import main as cli
from swagger_server.db import migrate
from swagger_server.db.migrate import MigrationError, Timeouts, upgrade
from tests.support.database import admin_connect, query, schema_dir

ROOT = Path(__file__).resolve().parents[2]
SQUAWK = Path(sys.executable).parent / "squawk"  # requirements-dev.txt pins it (squawk-cli, from PyPI)
ADD_COLUMNS = "ALTER TABLE orders ADD COLUMN upgrade_note text;\nALTER TABLE customers ADD COLUMN upgrade_note text;\n"
FAST = Timeouts(lock_timeout=0.2, statement_timeout=10, deadline=60, max_backoff=0.5)


def columns(conn, table: str) -> set[str]:
    rows = query(conn, "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    return {r[0] for r in rows}


class Reader:
    """A long transaction that has read `orders` (holding its ACCESS SHARE lock) until `end()`."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url, application_name="long-report")
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
        self.pid = self.conn.get_backend_pid()

    def end(self):
        self.conn.rollback()
        self.conn.close()


@pytest.mark.timing  # a count of an empty table takes ms: the 0.3 s over the lock timeout is scheduling slack
def test_a_file_waiting_for_a_lock_yields_to_traffic_and_is_applied_once_the_reader_ends(new_database, tmp_path):
    url = new_database("store_mig_yield")
    upgrade(url)
    folder = schema_dir(tmp_path, extra={"900_upgrade_note.sql": ADD_COLUMNS})
    reader = Reader(url)
    said: list[str] = []
    result: dict = {}

    def run():
        try:
            result["applied"] = upgrade(url, FAST, schema_dir=folder, say=said.append)
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    conn = admin_connect(url)
    try:
        wait_until(lambda: len([s for s in said if "yielded" in s]) >= 2, timeout=20, message="two yields")
        # While the migration keeps trying, a query on the table never waits longer than one lock timeout.
        waits = []
        for _ in range(30):
            start = time.monotonic()
            query(conn, "SELECT count(*) FROM orders")
            waits.append(time.monotonic() - start)
            time.sleep(0.02)  # pacing: a read every 20 ms while the migration runs
        assert max(waits) < FAST.lock_timeout + 0.3, waits
        assert "upgrade_note" not in columns(conn, "orders")
        yielded = next(s for s in said if "yielded" in s)
        assert "900_upgrade_note.sql" in yielded and "lock timeout" in yielded, yielded
        assert f"pid {reader.pid} (long-report)" in yielded, yielded  # the operator is told who blocks
        reader.end()
        thread.join(30)
        assert result.get("applied") == ["900_upgrade_note.sql"], result
        assert "upgrade_note" in columns(conn, "orders") and "upgrade_note" in columns(conn, "customers")
        assert query(conn, "SELECT count(*) FROM schema_migrations WHERE version = '900_upgrade_note.sql'") == [(1,)]
        assert upgrade(url, FAST, schema_dir=folder) == []  # twice changes nothing
    finally:
        conn.close()


def test_at_its_deadline_it_gives_up_naming_the_blocker_and_leaves_nothing(new_database, tmp_path):
    url = new_database("store_mig_deadline")
    upgrade(url)
    folder = schema_dir(tmp_path, extra={"900_upgrade_note.sql": ADD_COLUMNS})
    reader = Reader(url)
    try:
        with pytest.raises(MigrationError) as caught:
            upgrade(
                url, Timeouts(lock_timeout=0.1, deadline=1.0, max_backoff=0.2), schema_dir=folder, say=lambda _: None
            )
        message = str(caught.value)
        assert "900_upgrade_note.sql: not applied" in message and f"pid {reader.pid}" in message, message
    finally:
        reader.end()
    conn = admin_connect(url)
    try:  # one file, one transaction: neither column, no record
        assert "upgrade_note" not in columns(conn, "orders") | columns(conn, "customers")
        assert query(conn, "SELECT count(*) FROM schema_migrations WHERE version LIKE '900%%'") == [(0,)]
    finally:
        conn.close()


CONCURRENT_INDEX = "-- migrate: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS customers_name_key ON customers (name);\n"


def invalid_indexes(conn) -> list[str]:
    return [r[0] for r in query(conn, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")]


def test_a_failed_concurrent_build_leaves_no_invalid_index_and_a_rerun_builds_it(new_database, tmp_path):
    url = new_database("store_mig_concurrent")
    upgrade(url)
    conn = admin_connect(url)
    try:
        query(conn, "INSERT INTO customers (name, email) VALUES ('Twin', 'a@example.com'), ('Twin', 'b@example.com')")
        folder = schema_dir(tmp_path, extra={"900_customers_name_key.sql": CONCURRENT_INDEX})
        with pytest.raises(MigrationError, match="900_customers_name_key.sql: not applied: could not create unique"):
            upgrade(url, FAST, schema_dir=folder)
        assert invalid_indexes(conn) == []  # dropped at the failure
        # A build that died without cleaning up (a killed upgrade) leaves an invalid index: the next run
        # drops it first, where IF NOT EXISTS alone would keep it and record the file as applied.
        with pytest.raises(psycopg2.errors.UniqueViolation):
            query(conn, CONCURRENT_INDEX.split("\n", 1)[1])
        assert invalid_indexes(conn) == ["customers_name_key"]
        query(conn, "DELETE FROM customers WHERE email = 'b@example.com'")
        assert upgrade(url, FAST, schema_dir=folder) == ["900_customers_name_key.sql"]
        assert invalid_indexes(conn) == []
        assert query(conn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_name_key'::regclass") == [
            (True,)
        ]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "text",
    [
        "-- migrate: no-transaction\nALTER TABLE orders ADD COLUMN note text;\n",  # blocks traffic
        "-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY a ON orders (status);\nCREATE INDEX CONCURRENTLY b ON orders (total_cents);\n",
    ],
)
def test_a_no_transaction_file_must_hold_one_statement_traffic_never_waits_behind(new_database, tmp_path, text):
    url = new_database("store_mig_refused")
    folder = schema_dir(tmp_path, extra={"900_bad.sql": text})
    with pytest.raises(MigrationError, match="900_bad.sql: a no-transaction file holds exactly one"):
        upgrade(url, FAST, schema_dir=folder)
    conn = admin_connect(url)
    try:  # refused before anything ran: not even the first file
        assert query(conn, "SELECT to_regclass('customers') IS NULL") == [(True,)]
    finally:
        conn.close()


def test_status_lists_applied_pending_and_unknown_files(new_database, tmp_path, capsys, monkeypatch):
    url = new_database("store_mig_status")
    upgrade(url, schema_dir=schema_dir(tmp_path, upto="002_idempotency_keys.sql"))
    conn = admin_connect(url)
    try:
        query(conn, "INSERT INTO schema_migrations (version) VALUES ('999_from_a_newer_release.sql')")
    finally:
        conn.close()
    states = dict(migrate.status(url))
    assert states["001_store.sql"].startswith("applied 20")
    assert states["003_row_versions.sql"] == "pending"
    assert states["999_from_a_newer_release.sql"].endswith("unknown to this code")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_CONFIG", str(ROOT / "tests" / "empty.ini"))
    assert cli(["db", "status"]) == 0
    out = capsys.readouterr().out
    pending = len(migrate.shipped()) - 2
    assert re.search(r"^003_row_versions\.sql\s+pending$", out, re.M), out
    assert f"{pending} pending: run `python -m swagger_server db upgrade`" in out, out


def squawk(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SQUAWK), *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"NO_COLOR": "1"}
    )


def test_squawk_passes_every_schema_file_and_would_catch_a_blocking_one(tmp_path):
    assert SQUAWK.exists(), f"{SQUAWK} missing: make test installs requirements-dev.txt"
    files = sorted(migrate.SCHEMA_DIR.glob("*.sql"))
    clean = squawk(*files)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # The observer sees what it must: a plain index build on an existing table, and a waiver without
    # its rule, fail.
    bad = tmp_path / "900_blocking_index.sql"
    bad.write_text("CREATE INDEX orders_status_idx ON orders (status);\n")
    caught = squawk(bad)
    assert caught.returncode != 0 and "require-concurrent-index-creation" in caught.stdout, caught.stdout
    # Every waiver gives its reason on the line above.
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "squawk-ignore" in line:
                assert i > 0 and lines[i - 1].strip().startswith("-- why: "), (
                    f"{path.name}:{i + 1}: a waiver without why"
                )


@pytest.mark.parametrize("route", ["direct", "pgbouncer"])
def test_upgrades_at_once_apply_each_file_once_and_leave_no_session_state(request, new_database, tmp_path, route):
    """Two `db upgrade` at once (a Job retried while the first still runs) serialise on the advisory
    lock. Through PgBouncer in transaction mode too: a transactional file keeps its lock and timeouts
    inside its transaction, so no other client's server connection inherits them."""
    url = new_database(f"store_mig_twice_{route}")
    if route == "pgbouncer":
        url = request.getfixturevalue("pgbouncer").url(f"store_mig_twice_{route}")
    folder = schema_dir(tmp_path, extra={"900_upgrade_note.sql": ADD_COLUMNS})
    if route == "pgbouncer":
        # A no-transaction file (CREATE INDEX CONCURRENTLY) holds a session lock around its statement:
        # it needs PostgreSQL itself, as docs/UPGRADING.md says (the Kubernetes Job has the direct URL).
        for file in migrate.shipped(folder):
            if not file.transactional:
                file.path.unlink()
    results, errors = [], []

    def run():
        try:
            results.append(upgrade(url, FAST, schema_dir=folder, say=lambda _: None))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    applied_names = sorted(sum(results, []))
    assert applied_names == sorted(f.name for f in migrate.shipped(folder)), applied_names  # each once, by one
    conn = admin_connect(url)
    try:
        assert query(conn, "SELECT count(*) FROM schema_migrations") == [(len(applied_names),)]
        # No advisory lock left held, and the session defaults untouched, on any server connection.
        assert query(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
        for _ in range(5):
            assert query(conn, "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')") == [
                ("0", "0")
            ]
    finally:
        conn.close()


def test_a_role_that_may_not_create_the_search_extension_is_told_what_to_do(
    new_database, pg_server, capsys, monkeypatch
):
    """pg_trgm (007) needs CREATE on the database (a trusted extension) or an administrator: without
    it `db upgrade` stops at 007, saying what to run, and the files before it stay applied; once the
    extension exists, the same role goes on, to the next thing only an administrator may do (020's
    role), and once that is done too, finishes the upgrade."""
    url = new_database("store_mig_no_extension")
    admin = admin_connect(url)
    query(admin, "DROP ROLE IF EXISTS store_no_extension")
    query(admin, "CREATE ROLE store_no_extension LOGIN")
    query(admin, "GRANT CREATE, USAGE ON SCHEMA public TO store_no_extension")
    query(admin, "REVOKE CREATE ON DATABASE store_mig_no_extension FROM PUBLIC")
    role_url = url.replace("postgres@", "store_no_extension@", 1)
    try:
        with pytest.raises(MigrationError) as caught:
            upgrade(role_url, FAST, say=lambda _: None)
        message = str(caught.value)
        assert message.startswith("007_pg_trgm.sql: not applied: permission denied to create extension")
        assert "CREATE EXTENSION IF NOT EXISTS pg_trgm;" in message and "db upgrade" in message
        assert [r[0] for r in query(admin, "SELECT version FROM schema_migrations ORDER BY 1")][-1] == (
            "006_validate_text_identity.sql"
        )
        # The command line says it in one line, exit 1.
        monkeypatch.setenv("DATABASE_URL", role_url)
        monkeypatch.setenv("APP_CONFIG", str(Path(__file__).parent.parent / "empty.ini"))
        assert cli(["db", "upgrade"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("db upgrade: 007_pg_trgm.sql: not applied:"), err
        query(admin, "CREATE EXTENSION pg_trgm")  # what the message says an administrator runs
        # 020 needs the role store_bound, which this role may neither create nor grant itself: the file
        # says what an administrator runs; then the same role finishes the upgrade.
        with pytest.raises(MigrationError) as caught:
            upgrade(role_url, FAST, say=lambda _: None)
        message = str(caught.value)
        assert message.startswith("020_customer_scope.sql: not applied: permission denied"), message
        assert "CREATE ROLE store_bound NOLOGIN NOINHERIT; GRANT store_bound TO" in message and "db upgrade" in message
        query(
            admin, "DO $$ BEGIN CREATE ROLE store_bound NOLOGIN NOINHERIT; EXCEPTION WHEN duplicate_object THEN END $$"
        )
        query(admin, "GRANT store_bound TO store_no_extension WITH INHERIT FALSE, SET TRUE")
        assert "020_customer_scope.sql" in upgrade(role_url, FAST, say=lambda _: None)
        assert "007_pg_trgm.sql" in [r[0] for r in query(admin, "SELECT version FROM schema_migrations")]
    finally:
        query(admin, "DROP OWNED BY store_no_extension CASCADE")
        admin.close()
        admin_connect(pg_server.url("postgres")).cursor().execute("DROP ROLE store_no_extension")


class LockHolder:
    """A session that took the upgrade's advisory lock and keeps it (a stuck Job's backend, a psql)."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url, application_name="stuck-job")
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (migrate._LOCK_ID,))
        self.pid = self.conn.get_backend_pid()

    def end(self):
        self.conn.close()


@pytest.mark.timing  # the deadline is 1 s; the bound 5 s is the backoff's last sleep (0.5 s) and scheduling
@pytest.mark.parametrize("where", ["fresh database", "pending no-transaction file"])
def test_a_held_upgrade_lock_is_waited_for_under_the_deadline_naming_its_holder(new_database, tmp_path, where):
    """Any session holding the upgrade lock: `db upgrade` used to print nothing and wait for ever. Now it
    yields, one line a try naming the holder, gives up at its deadline saying whom to end, and applies
    once the lock is free."""
    url = new_database("store_mig_lock_held")
    folder = schema_dir(tmp_path)
    if where == "pending no-transaction file":
        upgrade(url)
        folder = schema_dir(tmp_path, extra={"900_index.sql": CONCURRENT_INDEX})
    holder = LockHolder(url)
    said: list[str] = []
    try:
        began = time.monotonic()
        with pytest.raises(MigrationError) as caught:
            upgrade(url, Timeouts(lock_timeout=0.1, deadline=1.0, max_backoff=0.5), schema_dir=folder, say=said.append)
        took = time.monotonic() - began
        message = str(caught.value)
        assert f"held by pid {holder.pid} (stuck-job" in message and "pg_terminate_backend" in message, message
        assert said and all("yielded" in line and f"pid {holder.pid} (stuck-job" in line for line in said), said
        assert took < 5, took
        if where == "pending no-transaction file":  # its own step, past the first: it yields too
            conn = psycopg2.connect(url)
            conn.autocommit = True
            try:
                with pytest.raises(migrate.UpgradeLockBusy):
                    migrate._apply_concurrently(migrate.shipped(folder)[-1], conn, FAST)
            finally:
                conn.close()
    finally:
        holder.end()
    assert upgrade(url, FAST, schema_dir=folder, say=lambda _: None)  # the lock free: applied


@pytest.mark.timing  # the deadline is 0.5 s; the bound 10 s is far from the default deadline (600 s) it replaces
def test_the_migrate_settings_of_the_environment_reach_db_upgrade(new_database, monkeypatch, capsys):
    """`db upgrade` under a held lock gives up at DB_MIGRATE_DEADLINE, not the default 600 s: the
    environment's [MIGRATE] reaches the command (it once was read and then dropped)."""
    url = new_database("store_mig_settings")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_CONFIG", str(Path(__file__).parent.parent / "empty.ini"))
    monkeypatch.setenv("DB_MIGRATE_LOCK_TIMEOUT", "0.1")
    monkeypatch.setenv("DB_MIGRATE_DEADLINE", "0.5")
    holder = LockHolder(url)
    try:
        began = time.monotonic()
        assert cli(["db", "upgrade"]) == 1
        took = time.monotonic() - began
    finally:
        holder.end()
    err = capsys.readouterr().err
    assert f"held by pid {holder.pid} (stuck-job" in err and took < 10, (took, err[-500:])


def test_a_role_without_rights_gets_one_line_not_a_traceback(new_database, pg_server, capsys, monkeypatch):
    """`db status` and `db upgrade` as a role that may not read the schema: one line on stderr saying
    what was refused and what to do, exit 1 (they printed 14-15 lines of traceback)."""
    url = new_database("store_mig_no_rights")
    upgrade(url)
    admin = admin_connect(url)
    query(admin, "DROP ROLE IF EXISTS store_no_rights")
    query(admin, "CREATE ROLE store_no_rights LOGIN")
    query(admin, "REVOKE ALL ON SCHEMA public FROM PUBLIC")
    query(admin, "GRANT USAGE ON SCHEMA public TO store_no_rights")  # it sees the tables, may read none
    monkeypatch.setenv("DATABASE_URL", url.replace("postgres@", "store_no_rights@", 1))
    monkeypatch.setenv("APP_CONFIG", str(Path(__file__).parent.parent / "empty.ini"))
    try:
        for action in ("status", "upgrade"):
            capsys.readouterr()
            assert cli(["db", action]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            err = [line for line in err if not line.startswith("note:")]
            assert len(err) == 1 and err[0].startswith(f"db {action}: ") and "permission denied" in err[0], err
            assert "Traceback" not in err[0]
    finally:
        query(admin, "DROP OWNED BY store_no_rights CASCADE")
        admin.close()
        admin_connect(pg_server.url("postgres")).cursor().execute("DROP ROLE store_no_rights")
