"""Behind PgBouncer in transaction mode: the app really goes through it, and leaves no session state."""

import psycopg2.extensions as ext
import pytest

from swagger_server import create_app, get_database
from swagger_server.request_scope import get_conn
from tests.support.auth import AUTH
from tests.support.database import TEST_DB, admin_connect, make_settings, query


@pytest.fixture
def single_server_connection(pg_server, database_url, tmp_path):
    """A PgBouncer with ONE server connection: every client shares the same PostgreSQL session."""
    from harness.pgbouncer import BINARY, PgBouncer

    if BINARY is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)")
    bouncer = PgBouncer(tmp_path / "bouncer", pg_server.port, pool_size=1).start()
    yield bouncer
    bouncer.stop()


def test_app_connections_go_through_pgbouncer(pgbouncer, store):
    app = create_app(make_settings(pgbouncer.url(TEST_DB)))
    try:
        with app.app.app_context():
            assert get_conn().info.port == pgbouncer.port
    finally:
        get_database(app).close(timeout=2)


def test_statement_timeout_leaves_no_session_state_for_other_clients(single_server_connection, store):
    url = single_server_connection.url(TEST_DB)
    app = create_app(make_settings(url, pool={"statement_timeout_ms": 1234}))
    try:
        with app.test_client(headers=AUTH) as client:
            for _ in range(20):
                assert client.get("/api/customers/1").status_code == 200
            with app.app.app_context():
                with get_conn().cursor() as cur:
                    cur.execute("SELECT current_setting('statement_timeout')")
                    assert cur.fetchone() == ("1234ms",)  # the app's statements get it ...
            other = admin_connect(url)  # ... another client of the same session does not
            try:
                with other.cursor() as cur:
                    ext.cursor.execute(cur, "SHOW statement_timeout")
                    assert cur.fetchone() == ("0",)
            finally:
                other.close()
    finally:
        get_database(app).close(timeout=2)
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]


@pytest.fixture
def small_server(tmp_path):
    """A PostgreSQL that accepts only 30 connections, with the schema and three customers."""
    from swagger_server.db.embedded import EmbeddedPostgres
    from swagger_server.db.migrate import upgrade

    server = EmbeddedPostgres(tmp_path / "small", settings={"max_connections": "30", "log_connections": "on"})
    server.start()
    conn = admin_connect(server.url())
    query(conn, "CREATE DATABASE store")
    conn.close()
    upgrade(server.url("store"))
    conn = admin_connect(server.url("store"))
    query(
        conn,
        "INSERT INTO customers (name, email) VALUES ('A', 'a@example.com'), ('B', 'b@example.com'),"
        " ('C', 'c@example.com')",
    )
    yield server, conn
    conn.close()
    server.destroy()


@pytest.mark.slow
def test_eighty_app_connections_through_pgbouncer_into_thirty_slots(small_server, tmp_path):
    import threading

    import requests

    from harness.pgbouncer import BINARY, PgBouncer
    from harness.waiting import wait_until
    from swagger_server.db.embedded import free_port
    from tests.support.servers import Gunicorn, gunicorn_env, refused_start

    if BINARY is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)")
    server, db = small_server
    bouncer = PgBouncer(tmp_path / "bouncer", server.port, pool_size=10).start()
    env = {"WEB_CONCURRENCY": 8, "WEB_THREADS": 10, "DB_POOL_MAX_CONNECTIONS": 10, "DB_POOL_MIN_CONNECTIONS": 10}
    try:
        # Without saying it is behind PgBouncer, the budget check sees 30 slots and refuses 80.
        code, _, err = refused_start(
            gunicorn_env(bouncer.url("store"), free_port(), **{k: str(v) for k, v in env.items()})
        )
        assert code == 3 and "8 workers x 10 connections = 80" in err

        log = server.datadir / "server.log"
        logged_before = len(log.read_text())
        app = Gunicorn(bouncer.url("store"), DB_PGBOUNCER_MAX_CLIENT_CONN=400, DB_POOL_TIMEOUT=5, **env)
        statuses = []

        def app_clients():
            return [c for c in bouncer.show("CLIENTS") if c["database"] == "store" and c["user"] == "postgres"]

        # Every worker's pool is full (min = max = 10): 80 clients of PgBouncer, all for "store".
        wait_until(lambda: len(app_clients()) == 80, timeout=20, message="80 app connections at PgBouncer")

        def load():
            session = requests.Session()
            session.headers.update(AUTH)
            for i in range(60):
                statuses.append(session.get(f"{app.base}/api/customers/{1 + i % 3}", timeout=10).status_code)

        threads = [threading.Thread(target=load) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(app_clients()) == 80
        code, output = app.stop()
        assert statuses == [200] * 2400
        assert "too many" not in output.lower()
        # Every server connection PostgreSQL accepted while the app ran, from its own log (a count,
        # not a sample that could miss a peak): PgBouncer's pool of 10, reused throughout.
        opened = log.read_text()[logged_before:].count("connection authorized: user=postgres database=store")
        assert 1 <= opened <= 10, opened
        assert code == 0
    finally:
        bouncer.stop()
