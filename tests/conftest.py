"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), a schema, known data, and the app.

settings -> app -> client build on each other; `db` is a separate autocommit connection for
asserting rows. Each test that uses `store` starts from the same known rows.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import psycopg2
import pytest

from swagger_server import create_app, get_database
from swagger_server.config import load_settings
from swagger_server.db.catalogue import truncate_store
from swagger_server.db.migrate import upgrade

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEST_DB = "store_test"


class ExternalServer:
    """A server we did not start (TEST_DATABASE_URL): usable, but not restartable."""

    restartable = False

    def __init__(self, url: str):
        self._url = urllib.parse.urlsplit(url)
        self.port = self._url.port or 5432

    def url(self, dbname: str = "postgres") -> str:
        return urllib.parse.urlunsplit(self._url._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """The PostgreSQL server for the whole session."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield ExternalServer(url)
        return
    from swagger_server.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", settings={"max_connections": "100"})
    server.restartable = True
    server.start()
    yield server
    server.destroy()


def admin_connect(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def database_url(pg_server) -> str:
    """A fresh database with the schema applied."""
    return schema_database(pg_server, TEST_DB)


def schema_database(pg_server, name: str) -> str:
    """The URL of database `name`, made anew with the schema applied (a module's database of its own)."""
    admin = admin_connect(pg_server.url("postgres"))
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    url = pg_server.url(name)
    upgrade(url)
    return url


@pytest.fixture
def new_database(pg_server):
    """make(name) -> the URL of a new, empty database (no schema); each is dropped after the test."""
    made = []
    admin = admin_connect(pg_server.url("postgres"))

    def make(name: str) -> str:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_server.url(name)

    yield make
    with admin.cursor() as cur:
        for name in made:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def seed_demo(url: str, customers: int) -> None:
    """`db seed --customers N` (a tenth as many products, ten orders each) in a process of its own: COPY
    cannot run in a process where an app installed its psycopg2 wait callback (as this one may have)."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "APP_CONFIG": str(Path(__file__).parent / "empty.ini")}
    done = subprocess.run(
        [sys.executable, "-m", "swagger_server", "db", "seed", "--customers", str(customers), "--quiet"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def schema_dir(tmp_path: Path, upto: str | None = None, extra: dict[str, str] | None = None) -> Path:
    """A copy of the shipped schema files (those up to and including `upto`), plus `extra` files."""
    from swagger_server.db.migrate import SCHEMA_DIR

    folder = tmp_path / "schema"
    folder.mkdir(exist_ok=True)
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        if upto is None or path.name <= upto:
            (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name, text in (extra or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def db(database_url):
    """An autocommit connection for setting up and asserting rows (not from the app's pool)."""
    conn = admin_connect(database_url)
    yield conn
    conn.close()


def query(conn, sql: str, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


@pytest.fixture
def store(db):
    """Known rows: 3 customers, 3 products, 2 orders (customer 1). Ids restart at 1."""
    truncate_store(db)  # every table from the catalogue: a new one can't leak rows into the next test
    query(
        db,
        "INSERT INTO customers (name, email, created_at) VALUES"
        " ('Ada Lovelace', 'ada@example.com', '2026-01-01T00:00:00Z'),"
        " ('Alan Turing', 'alan@example.com', '2026-01-02T00:00:00Z'),"
        " ('Grace Hopper', 'grace@example.com', '2026-01-03T00:00:00Z')",
    )
    query(
        db,
        "INSERT INTO products (sku, name, price_cents, stock) VALUES"
        " ('SKU-1', 'Keyboard', 1000, 10), ('SKU-2', 'Mouse', 500, 5), ('SKU-3', 'Cable', 250, 0)",
    )
    query(
        db,
        "INSERT INTO orders (customer_id, total_cents, created_at) VALUES"
        " (1, 2500, '2026-01-05T10:00:00Z'), (1, 1000, '2026-01-06T10:00:00Z')",
    )
    query(
        db,
        "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents) VALUES"
        " (1, 1, 2, 1000), (1, 2, 1, 500), (2, 1, 1, 1000)",
    )
    return db


def make_settings(database_url: str, **overrides):
    """Settings for tests: response validation on, short timeouts, a small pool."""
    env = {"DATABASE_URL": database_url, "API_TOKENS": TOKEN, "APP_CONFIG": str(Path(__file__).parent / "empty.ini")}
    base = load_settings(env)
    sections = {
        # Dashboard reports read for every request (tests change the store between two reads), and no
        # roller borrowing pool connections behind the pool tests' counts: the tests of each turn it on.
        "api": {"validate_responses": True, "dashboard_max_age": 0, "dashboard_rollup_interval": 0},
        "pool": {
            "min_connections": 1,
            "max_connections": 4,
            "timeout": 1.0,
            "statement_timeout_ms": 3000,
            "check_idle_after": 0.5,
            "reconnect_max_delay": 0.5,
        },
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return base.with_overrides(**sections)


@pytest.fixture(scope="session")
def pgbouncer(pg_server, database_url, tmp_path_factory):
    """PgBouncer in transaction mode in front of the test server (skipped where it is not installed)."""
    from harness.pgbouncer import BINARY, PgBouncer

    if BINARY is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)")
    bouncer = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), pg_server.port).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(params=["direct", "pgbouncer"])
def settings(request, database_url):
    """The app's settings, once connected straight to PostgreSQL and once through PgBouncer in
    transaction mode: nothing may rely on session state."""
    if request.param == "pgbouncer":
        return make_settings(request.getfixturevalue("pgbouncer").url(TEST_DB))
    return make_settings(database_url)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    get_database(app).close(timeout=2)


@pytest.fixture
def client(app):
    """A client with a write token on every request (customer data and orders need one to read)."""
    with app.test_client(headers=AUTH) as client:
        yield client


@pytest.fixture
def anon(app):
    """A client that sends no token."""
    with app.test_client() as client:
        yield client


@pytest.fixture
def pool(app):
    """The app's pool in this process (opened now)."""
    return get_database(app).pool


# -- under CI, a skip is a failure --------------------------------------------------------------------
def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a test that would skip (no Chromium, no PgBouncer, an unrestartable server)
    fails instead: CI must prove the browser and PgBouncer claims, not pass them quietly."""
    report = yield
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which fails the run instead: {reason}"
    return report
