"""Behind PgBouncer in transaction mode: the app really goes through it, and leaves no session state."""
import psycopg2.extensions as ext
import pytest

from swagger_server import create_app, get_database
from swagger_server.db.request import get_conn
from tests.conftest import TEST_DB, admin_connect, make_settings, query


@pytest.fixture
def single_server_connection(pg_server, database_url, tmp_path):
    """A PgBouncer with ONE server connection: every client shares the same PostgreSQL session."""
    from tests.pgbouncer import BINARY, PgBouncer
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
        with app.test_client() as client:
            for _ in range(20):
                assert client.get("/api/customers/1").status_code == 200
            with app.app.app_context():
                with get_conn().cursor() as cur:
                    cur.execute("SELECT current_setting('statement_timeout')")
                    assert cur.fetchone() == ("1234ms",)        # the app's statements get it ...
            other = admin_connect(url)                           # ... another client of the same session does not
            try:
                with other.cursor() as cur:
                    ext.cursor.execute(cur, "SHOW statement_timeout")
                    assert cur.fetchone() == ("0",)
            finally:
                other.close()
    finally:
        get_database(app).close(timeout=2)
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]
