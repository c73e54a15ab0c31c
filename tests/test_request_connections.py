"""The per-request connection contract, through the app: one connection per request, always returned."""

import os
import time

import pytest

from swagger_server import create_app, get_database
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


def test_a_request_with_two_queries_takes_one_connection(client, store, pool):
    before = pool.stats()["requests"]
    # An empty page of orders makes the handler also look the customer up: two queries.
    assert client.get("/api/customers/2/orders").status_code == 200
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


def test_exhausted_pool_answers_503_with_retry_after_after_the_timeout(client, store, pool):
    held = [pool.getconn() for _ in range(pool.max_size)]
    try:
        start = time.monotonic()
        response = client.get("/api/customers/1")
        elapsed = time.monotonic() - start
    finally:
        for conn in held:
            pool.putconn(conn)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "/api/problems/pool-exhausted"
    assert 1.0 <= elapsed <= 1.1 * 1.0 + 0.05, elapsed  # pool timeout 1 s, +10% (+ request overhead)
    assert pool.stats()["timeouts"] == 1
    assert client.get("/api/customers/1").status_code == 200


def test_mode_none_opens_and_closes_a_connection_per_request(database_url, store):
    app = create_app(make_settings(database_url, pool={"mode": "none"}))
    name = f"store-api:{os.getpid()}"
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


@pytest.mark.parametrize("path", ["/api/customers?limit=0", "/api/customers/abc", "/api/nope"])
def test_rejected_requests_take_no_connection(client, pool, path):
    before = pool.stats()["requests"]
    assert client.get(path).status_code in (400, 404)
    assert pool.stats()["requests"] == before
