"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), a schema, known data, and the app.

settings -> app -> client build on each other; `db` is a separate autocommit connection for
asserting rows. Each test that uses `store` starts from the same known rows. What tests import (the
tokens, the live server, raw HTTP, the database helpers) is in tests/support, never in a test module.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from swagger_server import create_app, get_database
from swagger_server.db.catalogue import truncate_store
from tests.support.auth import AUTH
from tests.support.database import (
    TEST_DB,
    ExternalServer,
    admin_connect,
    make_settings,
    query,
    schema_database,
)


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


@pytest.fixture(scope="session")
def database_url(pg_server) -> str:
    """A fresh database with the schema applied."""
    return schema_database(pg_server, TEST_DB)


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


@pytest.fixture
def db(database_url):
    """An autocommit connection for setting up and asserting rows (not from the app's pool)."""
    conn = admin_connect(database_url)
    yield conn
    conn.close()


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


# -- a session's temporary folder is its own ---------------------------------------------------------
_KEEP = 3  # finished sessions' folders kept for a look (their reports, a failed test's files), as pytest keeps


def pytest_configure(config):
    """Each session (the controller of a parallel one; its workers get folders inside it) gets a
    temporary folder of its own, outside pytest's numbered ones: a pytest session started meanwhile
    (make test-fast beside make test) prunes the numbered folders to the last three, and so deleted a
    running session's PostgreSQL data directories under it, failing every later test of that session.
    Ours are pruned only once their session's process is gone (its pid is in the folder), keeping the
    newest three."""
    if config.option.basetemp is not None or hasattr(config, "workerinput"):
        return
    root = Path(tempfile.gettempdir())
    finished = [d for d in root.glob("store-api-tests-*") if not _running(d / "session.pid")]
    for old in sorted(finished, key=lambda d: d.stat().st_mtime)[:-_KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    own = Path(tempfile.mkdtemp(prefix="store-api-tests-"))
    (own / "session.pid").write_text(str(os.getpid()))
    config.option.basetemp = str(own / "t")


def _running(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


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


# -- the fast tier (`make test-fast`) ------------------------------------------------------------------
# What starts a process (a server, a tool, a seeded store): a test that does, or uses a fixture that
# does, is not in the fast tier.
_PROCESSES = re.compile(
    r"\b(Gunicorn|start_gunicorn|refused_start|live_server|Popen|subprocess\.run|RedisServer|PgBouncer|seed_demo|seed"
    r"|make_replica|restart)\("
)


def _starts_a_process(item) -> bool:
    functions = [getattr(item, "function", None)]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        functions += [d.func for d in definitions if d.scope != "session"]
    for function in functions:
        try:
            if function is not None and _PROCESSES.search(inspect.getsource(function)):
                return True
        except (OSError, TypeError):
            continue
    return False


def pytest_collection_modifyitems(config, items):
    """The fast tier (`-m fast`, `make test-fast`): the tests that are neither slow nor timing and start
    no process, in or through their fixtures: the edit loop's, in-process against the test database.

    (`make test` spreads the modules over workers with `--dist loadfile`: a module's tests run in one
    worker, in order, and share its module fixtures: one live server a module, not one a worker.
    Not `loadgroup`: pytest-xdist 3.8 marks a group on `item._nodeid`, which pytest 9.2 no longer reads.)"""
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("slow", "timing")) and not _starts_a_process(item):
            item.add_marker(pytest.mark.fast)
    # The longest modules first (a stable sort: the rest, and each module's tests, keep their order).
    gone = [name for name in LONGEST_FIRST if not (Path(__file__).parent.parent / name).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names modules that are gone: {gone}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# `make test` hands the modules to its workers in collection order (`--no-loadscope-reorder`); xdist's
# default order, most tests first, started the contract fuzzer's one 64 s test last, and two workers
# sat idle for a minute behind it. Longest first, measured (`--junitxml`, seconds a module, 2026-12-07;
# 820 s in all, 273 s a worker):
LONGEST_FIRST = (
    "tests/project/test_contract.py",  # 64
    "tests/deploy/test_faults_gunicorn.py",  # 54
    "tests/deploy/test_reload.py",  # 49
    "tests/observability/test_prometheus.py",  # 43
    "tests/pipeline/test_ratelimit_redis.py",  # 42
    "tests/project/test_browser.py",  # 42
    "tests/project/test_sdk.py",  # 42
    "tests/deploy/test_upgrades.py",  # 36
    "tests/pipeline/test_fair_share.py",  # 28
    "tests/pipeline/test_http_layer.py",  # 25
    "tests/db/test_pgbouncer.py",  # 20
    "tests/project/test_docs.py",  # 20
)
