"""Metrics across gunicorn workers, JSON access logs, X-Request-ID, readiness, the database's view."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import psycopg2
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.db.database import application_name
from swagger_server.db.embedded import free_port
from tests.support.auth import AUTH
from tests.support.database import TEST_DB, make_settings
from tests.support.servers import Gunicorn, live_server


def scrape(base: str, session=requests) -> dict[tuple, float]:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    response = session.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(output: str) -> list[dict]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "store_api.access":
                lines.append(entry)
    return lines


two_workers = live_server("two_workers", WEB_CONCURRENCY=2, DB_POOL_MIN_CONNECTIONS=2)


def test_metrics_aggregate_every_worker_and_logs_say_one_line_per_request(two_workers, store):
    base = two_workers.base
    before = scrape(base)

    def get(i):
        # A new connection each time, from 8 threads at once: both workers answer.
        return requests.get(f"{base}/api/customers/1", headers={**AUTH, "X-Request-ID": f"test-{i}"}, timeout=10)

    def ours():  # the access lines of this test's requests, from stdout alone
        return [e for e in access_lines(two_workers.stdout()) if e["request_id"].startswith("test-")]

    # Rounds of 40 until both workers have answered: which worker accepts a connection is the
    # kernel's choice, and on a loaded machine one worker can take a whole round.
    sent = 0
    with ThreadPoolExecutor(8) as executor:
        for _ in range(10):
            answers = list(executor.map(get, range(sent, sent + 40)))
            assert [a.status_code for a in answers] == [200] * 40
            assert [a.headers["X-Request-ID"] for a in answers] == [f"test-{i}" for i in range(sent, sent + 40)]
            sent += 40
            wait_until(lambda sent=sent: len(ours()) >= sent, timeout=5, message=f"{sent} access log lines")
            if {e["pid"] for e in ours()} == set(two_workers.workers):
                break

    after = scrape(base)
    ok = {"method": "GET", "operation": "get_customer", "status": "200"}
    assert value(after, "store_api_requests_total", **ok) - value(before, "store_api_requests_total", **ok) == sent
    assert (
        value(after, "store_api_request_duration_seconds_count", operation="get_customer")
        - value(before, "store_api_request_duration_seconds_count", operation="get_customer")
        == sent
    )
    assert (
        value(after, "store_api_pool_wait_seconds_count", pool="primary")
        - value(before, "store_api_pool_wait_seconds_count", pool="primary")
        == sent
    )

    # Pool gauges are summed over both live workers (max 4 each), each worker copying its own once a
    # second: wait for both. (Waiting on size >= 4 raced: one worker alone can hold 4 after a burst.)
    wait_until(
        lambda: value(scrape(base), "store_api_pool_connections", pool="primary", state="max") == 8,
        timeout=5,
        message="both workers' pools in the gauges",
    )
    samples = scrape(base)
    assert value(samples, "store_api_pool_connections", pool="primary", state="size") >= 4
    for event in ("timeouts", "connection_errors", "reconnects", "connections_opened"):
        assert ("store_api_pool_events_total", (("event", event), ("pool", "primary"))) in samples

    # One JSON line per request on stdout (none on stderr): the ids sent, both workers, method, path,
    # operation, status, duration, and the pool wait as a part of the duration.
    lines = ours()
    assert sorted(e["request_id"] for e in lines) == sorted(f"test-{i}" for i in range(sent))
    everywhere = [e for e in access_lines(two_workers.output()) if e["request_id"].startswith("test-")]
    assert len(everywhere) == len(lines)  # the combined output holds no more: nothing went to stderr
    assert {(e["method"], e["path"], e["operation"], e["status"], e["db"]) for e in lines} == {
        ("GET", "/api/customers/1", "get_customer", 200, "primary")
    }
    assert all(0 < e["duration_ms"] and 0 <= e["pool_wait_ms"] <= e["duration_ms"] for e in lines), lines[:3]
    assert {e["pid"] for e in lines} == set(two_workers.workers)

    # Another method and path, refused by validation: its own line says so.
    refused = requests.post(f"{base}/api/customers", json={}, headers={**AUTH, "X-Request-ID": "post-1"}, timeout=5)
    assert refused.status_code == 400

    def post_line():
        return [e for e in access_lines(two_workers.stdout()) if e["request_id"] == "post-1"]

    (line,) = wait_until(post_line, timeout=5, message="the POST's access line")
    assert (line["method"], line["path"], line["operation"], line["status"], line["db"]) == (
        "POST",
        "/api/customers",
        "create_customer",
        400,
        None,
    )


def test_idle_workers_pools_are_in_the_gauges_from_the_start(database_url):
    """No request but scrapes on one kept-alive connection (so always the same worker): both workers'
    pools are in the gauges, the other's copied by its own thread."""
    server = Gunicorn(database_url, WEB_CONCURRENCY=2, DB_POOL_MIN_CONNECTIONS=2)
    try:
        with requests.Session() as session:
            session.headers.update(AUTH)
            wait_until(
                lambda: (
                    value(scrape(server.base, session), "store_api_pool_connections", pool="primary", state="max") == 8
                ),
                timeout=5,
                message="both workers' pools in the gauges",
            )
    finally:
        server.stop()


def test_health_db_shows_every_workers_connections(two_workers):
    """Each worker opens its pool's min_connections in the background as it starts: within seconds
    (on a loaded machine, a worker's first connection was once not there yet at the first look)."""
    expected = {application_name(pid) for pid in two_workers.workers}

    def seen():
        body = requests.get(f"{two_workers.base}/api/health/db", headers=AUTH, timeout=5).json()
        return expected <= {row["application_name"] for row in body["connections"]} and body

    body = wait_until(seen, timeout=10, message="every worker's connections in /api/health/db")
    per_worker = {}
    for row in body["connections"]:
        per_worker[row["application_name"]] = per_worker.get(row["application_name"], 0) + row["count"]
    assert all(per_worker[application_name(pid)] >= 1 for pid in two_workers.workers)


def test_request_id_is_generated_when_missing_or_malformed(two_workers):
    generated = requests.get(f"{two_workers.base}/api/health", timeout=5).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    replaced = requests.get(f"{two_workers.base}/api/health", headers={"X-Request-ID": "bad id\t!"}, timeout=5)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])
    longest = "a:b.c-D_" * 16  # 128 characters of the allowed set: kept
    kept = requests.get(f"{two_workers.base}/api/health", headers={"X-Request-ID": longest}, timeout=5)
    assert kept.headers["X-Request-ID"] == longest
    too_long = requests.get(f"{two_workers.base}/api/health", headers={"X-Request-ID": longest + "x"}, timeout=5)
    assert re.fullmatch(r"[0-9a-f]{32}", too_long.headers["X-Request-ID"])
    # Also on error answers rendered by Connexion (a 404 problem) and by the app (a 401).
    assert "X-Request-ID" in requests.get(f"{two_workers.base}/api/nowhere", timeout=5).headers
    assert (
        requests.post(f"{two_workers.base}/api/customers", json={}, timeout=5, headers={"X-Request-ID": "abc"}).headers[
            "X-Request-ID"
        ]
        == "abc"
    )


def test_pool_timeouts_are_counted(database_url, store):
    server = Gunicorn(
        database_url,
        WEB_CONCURRENCY=1,
        WEB_THREADS=2,
        DB_POOL_MIN_CONNECTIONS=1,
        DB_POOL_MAX_CONNECTIONS=1,
        DB_POOL_TIMEOUT=0.3,
        API_CALLER_SHARE=1,  # one token takes both threads: the pool, not the share, is what is tested
    )
    locker = psycopg2.connect(database_url)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")  # reads of customers block
        held = threading.Thread(
            target=requests.get, args=(f"{server.base}/api/customers/1",), kwargs={"headers": AUTH, "timeout": 10}
        )
        held.start()
        wait_until(
            lambda: value(scrape(server.base), "store_api_pool_connections", pool="primary", state="in_use") == 1,
            timeout=5,
            message="the connection to be held",
        )
        refused = requests.get(f"{server.base}/api/customers/2", headers=AUTH, timeout=10)
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("pool-exhausted")
        locker.rollback()
        held.join(10)
        wait_until(
            lambda: value(scrape(server.base), "store_api_pool_events_total", pool="primary", event="timeouts") >= 1,
            timeout=5,
            message="the timeout in the metrics",
        )
        samples = scrape(server.base)
        assert value(samples, "store_api_requests_total", method="GET", operation="get_customer", status="503") == 1
    finally:
        locker.close()
        server.stop()


def test_readiness_follows_the_database(database_url):
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers=AUTH) as client:
            ready = client.get("/api/health/ready")
            assert ready.status_code == 200 and ready.json() == {"status": "ready", "pool": "checked"}
    finally:
        get_database(app).close(timeout=2)
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/{TEST_DB}"
    app = create_app(make_settings(nowhere))
    try:
        with app.test_client(headers=AUTH) as client:
            down = client.get("/api/health/ready")
            assert down.status_code == 503
            assert down.json()["type"].endswith("database-unavailable")
            assert "Retry-After" in down.headers
            assert client.get("/api/health").status_code == 200  # liveness does not depend on it
    finally:
        get_database(app).close(timeout=2)


def test_make_run_logs_one_short_line_per_request_for_a_person(database_url):
    server = Gunicorn(database_url, WEB_CONCURRENCY=1, LOG_FORMAT="text")
    try:
        requests.get(f"{server.base}/api/health", timeout=5)
        requests.get(f"{server.base}/api/customers/1", timeout=5)
        wait_until(lambda: "/api/customers/1 401" in server.output(), timeout=5, message="the text access line")
    finally:
        _, output = server.stop()
    lines = [line for line in output.splitlines() if "/api/" in line and " ms" in line]
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d GET +/api/health 200 [\d.]+ ms", line) for line in lines), lines
    assert all(len(line) < 120 and not line.startswith("{") for line in lines), lines
    assert "BadRequestProblem" not in output and "OAuthProblem" not in output


def test_access_log_false_writes_no_request_lines_but_still_counts(database_url, store):
    server = Gunicorn(database_url, WEB_CONCURRENCY=1, ACCESS_LOG="false")
    try:
        before = value(
            scrape(server.base), "store_api_requests_total", method="GET", operation="get_customer", status="200"
        )
        for _ in range(5):
            assert requests.get(f"{server.base}/api/customers/1", headers=AUTH, timeout=5).status_code == 200
        after = value(
            scrape(server.base), "store_api_requests_total", method="GET", operation="get_customer", status="200"
        )
    finally:
        _, output = server.stop()
    assert after - before == 5
    assert access_lines(output) == [] and '"store_api.access"' not in output


def test_a_scrape_is_answered_while_every_handler_thread_is_busy(database_url, store):
    """One worker, one handler thread, held by a request waiting on a lock: /metrics still answers
    at once (it is served before the handler threads), and shows the held connection."""
    server = Gunicorn(database_url, WEB_CONCURRENCY=1, WEB_THREADS=1, DB_POOL_TIMEOUT=5, DB_STATEMENT_TIMEOUT_MS=10_000)
    locker = psycopg2.connect(database_url)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            held = threading.Thread(
                target=requests.get, args=(f"{server.base}/api/customers/1",), kwargs={"headers": AUTH, "timeout": 20}
            )
            held.start()
            wait_until(
                lambda: cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted") or cur.fetchone()[0] > 0,
                message="the only handler thread to wait on the lock",
            )
            # A request to the API now waits for the thread (up to the 5 s pool timeout); a scrape does not.
            samples = scrape(server.base)  # its own timeout is 5 s
            assert value(samples, "store_api_pool_connections", pool="primary", state="in_use") == 1
        locker.rollback()
        held.join(20)
    finally:
        locker.close()
        server.stop()


def test_a_dead_workers_gauges_are_dropped(database_url):
    """A worker killed with SIGKILL is replaced; the gauges sum the two live workers (max 2 x 4 = 8),
    not the dead one's last values too (which would make 12)."""
    server = Gunicorn(database_url, WEB_CONCURRENCY=2, DB_POOL_MAX_CONNECTIONS=4)
    try:
        assert wait_until(
            lambda: value(scrape(server.base), "store_api_pool_connections", pool="primary", state="max") == 8,
            message="both workers in the gauges",
        )
        victim = server.workers[0]
        os.kill(victim, signal.SIGKILL)
        master = psutil.Process(server.process.pid)
        replacement = wait_until(
            lambda: (
                [p for p in master.children() if p.pid not in server.workers] if len(master.children()) == 2 else []
            ),
            timeout=20,
            message="gunicorn to replace the killed worker",
        )[0]
        # Once the replacement has been up for over two sync intervals it has written its own gauges.
        wait_until(lambda: time.time() - replacement.create_time() > 2.5, timeout=10, message="two sync intervals")
        samples = scrape(server.base)
        assert value(samples, "store_api_pool_connections", pool="primary", state="max") == 8
    finally:
        server.stop()


def test_the_text_log_names_the_trace_when_tracing_is_on():
    """`make run`'s text line carries the trace id when there is one (the JSON line always did)."""
    import logging

    from swagger_server.observability.logs import TextFormatter

    fields = {"status": 200, "method": "GET", "path": "/api/products/3", "duration_ms": 1.25}
    record = logging.LogRecord("store_api.access", logging.INFO, __file__, 0, "request", None, None)
    record.fields = fields
    assert "trace" not in TextFormatter(colour=False).format(record)
    record.fields = {**fields, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    line = TextFormatter(colour=False).format(record)
    assert line.endswith(" 200 1.2 ms trace 4bf92f3577b34da6a3ce929d0e0e4736") and len(line) < 120, line
