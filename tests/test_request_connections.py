"""The per-request connection contract, through the app: one connection per request, always returned."""

import os
import time

import pytest

from swagger_server import create_app, get_database
from swagger_server.db.connection import Cursor
from swagger_server.db.database import application_name
from swagger_server.request_scope import get_conn
from tests.conftest import AUTH, make_settings, query
from tests.helpers import wait_until


def test_same_connection_for_the_whole_request(app, pool):
    with app.app.app_context():
        first = get_conn()
        assert get_conn() is first
        assert pool.stats()["in_use"] == 1
    assert pool.stats()["in_use"] == 0
    assert not first.closed  # returned to the pool, not closed


class _RecordingCursor(Cursor):
    """The app's own cursor class, also noting which backend ran each statement."""

    ran: list[tuple[int, str]] = []

    def execute(self, query, vars=None):
        _RecordingCursor.ran.append((self.connection.backend_pid, str(query)))
        return super().execute(query, vars)


def test_a_request_with_two_queries_takes_one_connection(client, store, pool):
    # Every connection the pool has, with a cursor that records what runs on it.
    conns = [pool.getconn() for _ in range(pool.max_size)]
    for conn in conns:
        conn.cursor_factory = _RecordingCursor
        pool.putconn(conn)
    _RecordingCursor.ran = []
    before = pool.stats()["requests"]
    try:
        # An empty page of orders makes the handler also look the customer up: two queries.
        response = client.get("/api/customers/2/orders")
    finally:
        for conn in conns:
            conn.cursor_factory = Cursor
    assert response.status_code == 200 and response.json()["items"] == []
    ran = _RecordingCursor.ran
    assert len(ran) == 2, ran
    assert "FROM orders" in ran[0][1] and "FROM customers" in ran[1][1], ran
    assert ran[0][0] == ran[1][0]  # the same backend: one connection
    assert pool.stats()["requests"] == before + 1


def test_connection_returned_and_rolled_back_when_the_handler_raises(app, client, store, pool):
    def boom():
        conn = get_conn()
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO customers (name, email) VALUES ('Half', 'half@example.com')")
        raise RuntimeError("secret internal detail")

    app.app.add_url_rule("/boom", "boom", boom)
    rollbacks = pool.stats()["rollbacks"]
    response = client.get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    wait_until(lambda: pool.stats()["in_use"] == 0, message="the connection to come back")
    assert pool.stats()["rollbacks"] == rollbacks + 1
    assert query(store, "SELECT count(*) FROM customers WHERE email = 'half@example.com'") == [(0,)]


def test_exhausted_pool_answers_503_with_retry_after_after_the_timeout(database_url, store):
    app = create_app(make_settings(database_url, pool={"timeout": 2.0}))
    pool = get_database(app).pool
    held = [pool.getconn() for _ in range(pool.max_size)]
    try:
        with app.test_client(headers=AUTH) as client:
            try:
                start = time.monotonic()
                response = client.get("/api/customers/1", headers={"Origin": "http://localhost:3000"})
                elapsed = time.monotonic() - start
            finally:
                for conn in held:
                    pool.putconn(conn)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["type"] == "/api/problems/pool-exhausted"
            assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert 2.0 <= elapsed <= 2.0 * 1.1, elapsed  # the pool timeout, +10 %
            assert pool.stats()["timeouts"] == 1
            assert client.get("/api/customers/1").status_code == 200
    finally:
        get_database(app).close(timeout=2)


def test_mode_none_opens_and_closes_a_connection_per_request(database_url, store):
    app = create_app(make_settings(database_url, pool={"mode": "none"}))
    name = application_name(os.getpid())
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    baseline = query(store, count, (name,))[0][0]
    with app.test_client(headers=AUTH) as client:
        first = client.get("/api/health/db/test", headers=AUTH).json()["backend_pid"]
        second = client.get("/api/health/db/test", headers=AUTH).json()["backend_pid"]
    assert first != second
    wait_until(
        lambda: query(store, "SELECT count(*) FROM pg_stat_activity WHERE pid IN (%s, %s)", (first, second))[0][0] == 0,
        message="per-request connections to close",
    )
    assert query(store, count, (name,))[0][0] == baseline
    stats = get_database(app).pool.stats()  # a NullPool: honest counts, nothing kept
    assert stats["connections_opened"] == stats["connections_closed"] == 2 and stats["size"] == 0


def test_the_pool_is_made_per_process(app, pool):
    """A pool never crosses a fork: the child gets its own, and the parent's is refused there."""
    read, write = os.pipe()
    # Fork while this thread holds the pool's lock: no pool thread can be holding it (or be halfway
    # through what it guards) at the fork, and the child, where this thread goes on, releases it.
    with pool._lock:
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            try:
                pool.getconn()
            except Exception as exc:
                refused = "cannot be used in process" in str(exc)
            else:
                refused = False
            fresh = get_database(app).pool
            with app.app.app_context():
                conn = get_conn()
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    ok = cur.fetchone() == (1,)
            code = 0 if (refused and fresh is not pool and fresh.pid == os.getpid() and ok) else 1
        finally:
            os.write(write, str(code).encode())
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    assert os.read(read, 10) == b"0"
    assert os.WEXITSTATUS(status) == 0
    # The parent's pool is untouched by the child.
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    pool.putconn(conn)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/customers?limit=0", AUTH, 400),  # invalid query
        ("GET", "/api/customers/abc", AUTH, 404),  # not an id: no such route
        ("GET", "/api/nope", AUTH, 404),
        ("GET", "/api/customers/1", {}, 401),  # no token
        ("GET", "/api/customers/1", {"Authorization": "Bearer wrong"}, 401),
        ("DELETE", "/api/products", AUTH, 405),
        (
            "OPTIONS",  # a CORS preflight, answered by the CORS middleware
            "/api/customers",
            {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
            200,
        ),
        ("POST", "/api/customers", {**AUTH, "Content-Type": "text/plain"}, 415),
    ],
)
def test_rejected_requests_take_no_connection(app, pool, method, path, headers, status):
    before = pool.stats()["requests"]
    with app.test_client() as client:
        response = client.request(method, path, headers=headers, content=b"x" if method == "POST" else None)
    assert response.status_code == status, response.text
    if method == "OPTIONS":
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert pool.stats()["requests"] == before
