"""Faults under real gunicorn and real HTTP: a database restart under load, leaks, contention, shutdown."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest
import requests

from tests.conftest import AUTH, admin_connect, query
from tests.helpers import wait_until
from tests.servers import Gunicorn

pytestmark = pytest.mark.slow

POOL_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 1.0


@pytest.fixture
def server(database_url):
    servers = []

    def start(**env):
        env = {"DB_POOL_TIMEOUT": POOL_TIMEOUT, "DB_STATEMENT_TIMEOUT_MS": int(STATEMENT_TIMEOUT * 1000), **env}
        servers.append(Gunicorn(database_url, **env))
        return servers[-1]

    yield start
    for running in servers:
        running.stop()


def pool_stats_per_worker(base: str, workers: list[int]) -> dict[int, dict]:
    """Ask /api/health/db until every worker has answered once; pid -> pool stats."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + 10
    while set(seen) != set(workers) and time.monotonic() < deadline:
        stats = requests.get(f"{base}/api/health/db", headers=AUTH, timeout=5).json()["pool"]
        seen[stats["pid"]] = stats
    return seen


def test_database_restart_under_load(server, store, pg_server):
    if not pg_server.restartable:
        pytest.skip("TEST_DATABASE_URL points at a server this suite cannot restart")
    app = server()
    results: list[tuple[float, float, int, bool]] = []
    failures: list[str] = []
    stop = threading.Event()
    began = time.monotonic()

    def load():
        session = requests.Session()
        session.headers.update(AUTH)
        while not stop.is_set():
            start = time.monotonic()
            try:
                response = session.get(f"{app.base}/api/customers/{random.randint(1, 3)}", timeout=10)
                status, retry_after = response.status_code, "retry-after" in response.headers
            except requests.RequestException as exc:
                status, retry_after = -1, False
                failures.append(f"{time.monotonic() - began:.2f}s {exc!r}")
            results.append((start, time.monotonic(), status, retry_after))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    pg_server.stop("fast")
    time.sleep(2.0)  # long enough for several reconnect attempts to fail
    pg_server.start()  # returns once PostgreSQL accepts connections
    up_at = time.monotonic()
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join(15)

    statuses = [r[2] for r in results]
    assert failures == [], f"requests to gunicorn failed (restart at 1.5 s, up at {up_at - began:.2f} s)"
    assert statuses.count(500) == 0
    assert all(code in (200, 503) for code in statuses), set(statuses)
    assert all(retry for _, _, code, retry in results if code == 503)
    assert statuses.count(503) > 0, "the restart was not noticed at all"
    longest = max(end - start for start, end, _, _ in results)
    assert longest <= (POOL_TIMEOUT + STATEMENT_TIMEOUT) * 1.1, longest
    after = [code for start, _, code, _ in results if start >= up_at + 2.0]
    assert after and all(code == 200 for code in after), "service not back within 2 s of the database"


def test_no_connection_leaks_after_thousands_of_mixed_requests(server, store, db):
    app = server()
    host, port = "127.0.0.1", app.port

    def disconnecting_client():
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"GET /api/dashboard?from=2026-01-01&to=2026-12-31 HTTP/1.1\r\nHost: x\r\n\r\n")
        # closed before the answer arrives

    calls = [
        lambda s: s.get(f"{app.base}/api/customers/1"),
        lambda s: s.get(f"{app.base}/api/customers/999"),  # handler raises 404
        lambda s: s.get(f"{app.base}/api/customers?limit=0"),  # validation 400
        lambda s: s.post(
            f"{app.base}/api/orders",
            headers=AUTH,  # 409 inside a transaction
            json={"customer_id": 1, "lines": [{"product_id": 3, "quantity": 1}]},
        ),
        lambda s: s.post(
            f"{app.base}/api/customers",
            headers=AUTH,  # unique violation 409
            json={"name": "Dup", "email": "ada@example.com"},
        ),
        lambda s: disconnecting_client(),
    ]
    expected = {0: 200, 1: 404, 2: 400, 3: 409, 4: 409}
    errors = []

    def worker(n):
        session = requests.Session()
        session.headers.update(AUTH)
        for i in range(125):
            kind = (n + i) % len(calls)
            response = calls[kind](session)
            if kind in expected and response.status_code != expected[kind]:
                errors.append((kind, response.status_code, response.text[:200]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []

    def settled():
        rows = query(
            db,
            "SELECT state, count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) GROUP BY 1",
            ([f"store-api:{pid}" for pid in app.workers],),
        )
        return dict(rows)

    wait_until(lambda: set(settled()) == {"idle"}, timeout=10, message="every app connection idle")
    per_worker = pool_stats_per_worker(app.base, app.workers)
    assert set(per_worker) == set(app.workers)
    for stats in per_worker.values():
        assert stats["in_use"] == 0 and stats["waiting"] == 0
        assert stats["size"] <= stats["max"]
    assert query(db, "SELECT count(*) FROM customers") == [(3,)]


def test_fifty_parallel_orders_for_ten_in_stock(server, store, db):
    app = server(DB_POOL_TIMEOUT=10)
    query(db, "UPDATE products SET stock = 10 WHERE id = 1")
    barrier = threading.Barrier(50)
    statuses = []

    def place():
        session = requests.Session()
        session.headers.update(AUTH)
        barrier.wait()
        response = session.post(
            f"{app.base}/api/orders",
            headers=AUTH,
            json={"customer_id": 2, "lines": [{"product_id": 1, "quantity": 1}]},
            timeout=30,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=place) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [201] * 10 + [409] * 40
    assert query(db, "SELECT stock FROM products WHERE id = 1") == [(0,)]
    assert query(
        db,
        "SELECT count(*), sum(l.quantity) FROM orders o JOIN order_lines l ON l.order_id = o.id"
        " WHERE o.customer_id = 2",
    ) == [(10, 10)]


def test_concurrent_retries_with_one_idempotency_key_place_one_order(server, store, db):
    app = server(DB_POOL_TIMEOUT=10)
    barrier = threading.Barrier(10)
    answers = []

    def place():
        session = requests.Session()
        session.headers.update(AUTH)
        barrier.wait()
        response = session.post(
            f"{app.base}/api/orders",
            timeout=30,
            headers={**AUTH, "Idempotency-Key": "same-client-retry"},
            json={"customer_id": 2, "lines": [{"product_id": 2, "quantity": 1}]},
        )
        answers.append((response.status_code, response.json()["id"]))

    threads = [threading.Thread(target=place) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(code for code, _ in answers) == [200] * 9 + [201]
    assert len({order_id for _, order_id in answers}) == 1
    assert query(db, "SELECT stock FROM products WHERE id = 2") == [(4,)]
    assert query(db, "SELECT count(*) FROM orders WHERE customer_id = 2") == [(1,)]


def test_graceful_shutdown_finishes_in_flight_requests_then_closes_connections(server, store, db, database_url):
    app = server(DB_STATEMENT_TIMEOUT_MS=10_000)  # the in-flight order waits on a lock for over a second
    locker = admin_connect(database_url)
    query(locker, "BEGIN")
    query(locker, "SELECT * FROM products WHERE id = 1 FOR UPDATE")
    result = {}
    placing = threading.Thread(
        target=lambda: result.update(
            response=requests.post(
                f"{app.base}/api/orders",
                headers=AUTH,
                timeout=30,
                json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]},
            )
        )
    )
    placing.start()
    wait_until(
        lambda: query(
            db, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name LIKE 'store-api:%%'"
        ),
        message="the order to be in flight",
    )
    app.process.send_signal(15)  # SIGTERM: graceful
    time.sleep(1.0)
    assert app.process.poll() is None  # still finishing the in-flight request
    query(locker, "ROLLBACK")
    locker.close()
    placing.join(30)
    assert result["response"].status_code == 201, result["response"].text
    code, err = app.stop()
    assert code == 0, err
    names = [f"store-api:{pid}" for pid in app.workers]
    wait_until(
        lambda: (
            query(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,))[0][0] == 0
        ),
        timeout=5,
        message="no connection left",
    )
