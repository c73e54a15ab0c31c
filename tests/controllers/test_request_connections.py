"""The per-request connection contract, through the app: one connection per request, always returned."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.db.connection import Cursor
from swagger_server.db.database import application_name
from swagger_server.request_scope import get_conn
from tests.support.auth import AUTH
from tests.support.database import make_settings, query


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


@pytest.mark.timing
def test_exhausted_pool_answers_503_with_retry_after_after_the_timeout(database_url, store):
    app = create_app(make_settings(database_url, pool={"timeout": 5.0}, api={"retry_after": 4}))
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
            assert response.headers["retry-after"] == "4"  # [API] retry_after reaches the pool-exhausted 503 too
            assert response.json()["type"] == "/api/problems/pool-exhausted"
            assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert 5.0 <= elapsed <= 5.0 * 1.1, (
                elapsed
            )  # the pool timeout, +10 % (5 s: 500 ms of room beside a parallel run)
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


FORK_PROBE = """
import json, os, sys, threading, time
from swagger_server import create_app, get_database
from harness.waiting import wait_until
from swagger_server.request_scope import get_conn
from tests.support.database import make_settings

app = create_app(make_settings(sys.argv[1]))
pool = get_database(app).pool
pool.wait_ready(10)
wait_until(lambda: not pool.stats()["opening"], timeout=10, message="the pool's connectors to be idle")
threads = sorted(t.name for t in threading.enumerate())
read, write = os.pipe()
# This thread holds the pool's lock at the fork: the pool's own threads are waiting on it (nothing
# else runs in this process), so none is halfway through what it guards; the child releases it.
with pool._lock:
    child = os.fork()
if child == 0:
    result = {}
    try:
        try:
            pool.getconn()
        except Exception as exc:
            result["refused"] = str(exc)
        fresh = get_database(app).pool
        result["fresh"] = fresh is not pool and fresh.pid == os.getpid()
        with app.app.app_context():
            with get_conn().cursor() as cur:
                cur.execute("SELECT 1")
                result["query"] = cur.fetchone()[0]
    except BaseException as exc:
        result["error"] = repr(exc)
    finally:
        os.write(write, json.dumps(result).encode())
        os._exit(0)
os.close(write)
os.waitpid(child, 0)
child_result = json.loads(os.read(read, 65536) or b"{}")
conn = pool.getconn()  # the parent's pool is untouched by the child
with conn.cursor() as cur:
    cur.execute("SELECT 1")
    parent = cur.fetchone()[0]
pool.putconn(conn)
get_database(app).close(timeout=2)
print(json.dumps({"threads": threads, "child": child_result, "parent": parent}))
"""


def test_the_pool_is_made_per_process(database_url):
    """A pool never crosses a fork: the child gets its own, and the parent's is refused there.

    In a process of its own, where the pool's threads are the only ones: forked from this test's
    process, the child could inherit a lock held by any thread another test left running."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_PROBE, database_url],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in outcome["child"], outcome
    assert "cannot be used in process" in outcome["child"]["refused"]
    assert outcome["child"]["fresh"] is True and outcome["child"]["query"] == 1
    assert outcome["parent"] == 1


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/customers?limit=0", AUTH, 400),  # invalid query
        ("GET", "/api/customers/abc", AUTH, 400),  # not an id: a 400 naming customer_id, before any connection
        ("GET", "/api/customers/%0A", {}, 404),  # a path Connexion does not route: not served by Flask either
        ("GET", "/api/customers/1%0A", AUTH, 404),
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
