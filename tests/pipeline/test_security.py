"""Hostile input against real gunicorn: limits before work, 4xx problems never 5xx, one problem shape,
tokens with scopes, per-client Idempotency-Keys, bounded metric labels.

Memory is measured as the workers' RSS (psutil) before and after; time as the wall time until the
answer arrives, against a bound the test sets (the limit is hit at 1 MiB of a 20 MiB body).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time

import psutil
import pytest
import requests

from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from tests.support.auth import AUTH, TOKEN
from tests.support.database import TEST_DB, query
from tests.support.servers import Gunicorn, live_server

READER = "reader-token-1"
OTHER_WRITER = "writer-token-2"
HASHED = "hashed-token-3"
TOKENS = f"{TOKEN},read:{READER},{OTHER_WRITER},read:sha256:{hashlib.sha256(HASHED.encode()).hexdigest()}"
MIB = 1 << 20
BIG = 20 * MIB
AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n"


server = live_server("server", API_TOKENS=TOKENS, API_IDEMPOTENCY_TTL="1")


def rss(server) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.workers)


def raw_request(server, head: bytes, body_chunks=(), read_timeout: float = 10.0) -> tuple[int, dict, bytes, float]:
    """Send `head`, then `body_chunks`, from a thread (as a client that reads while it sends); return the
    status, headers, body and the seconds from the first byte sent to the whole answer read."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(read_timeout)
    start = time.monotonic()

    def feed():
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: expected

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        head_part, _, body = data.partition(b"\r\n\r\n")
        lines = head_part.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body, elapsed


def assert_problem(status: int, headers: dict, body: bytes, expected: int, field: str | None = None) -> dict:
    assert status == expected, body[:500]
    assert headers["content-type"].startswith("application/problem+json")
    assert len(body) < 1000, f"an error body of {len(body)} bytes"
    problem = json.loads(body)
    assert problem["status"] == expected and problem["type"].startswith("/api/problems/") and problem["title"]
    if field is not None:
        assert problem.get("field") == field, problem
    return problem


@pytest.mark.timing
@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_a_20_mib_body_is_413_at_once_with_memory_flat(server, how):
    before = rss(server)
    chunk = b"x" * 65536
    if how == "content-length":
        head = (
            f"POST /api/customers HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Type: application/json\r\n"
            f"Content-Length: {BIG}\r\n\r\n"
        ).encode()
        chunks = (chunk for _ in range(BIG // len(chunk)))
    else:
        head = (
            f"POST /api/customers HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunks = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(BIG // len(chunk)))
    status, headers, body, elapsed = raw_request(server, head, chunks)
    problem = assert_problem(status, headers, body, 413)
    assert "1048576" in problem["detail"]
    assert elapsed < 1.0, f"413 after {elapsed:.2f} s"
    assert headers.get("connection") == "close"
    growth = rss(server) - before
    assert growth < 16 * MIB, f"workers grew by {growth / MIB:.1f} MiB"
    print(f"{how}: 413 after {elapsed * 1000:.0f} ms, workers' RSS {growth / MIB:+.1f} MiB")


def test_a_chunked_body_under_the_limit_is_served(server, store):
    body = json.dumps({"name": "Chunked", "email": "chunked@example.com"}).encode()
    head = (
        f"POST /api/customers HTTP/1.1\r\nHost: x\r\n{AUTH_LINE}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = [b"%x\r\n%s\r\n" % (5, body[:5]), b"%x\r\n%s\r\n" % (len(body) - 5, body[5:]), b"0\r\n\r\n"]
    status, _, answer, _ = raw_request(server, head, chunks)
    assert status == 201, answer
    assert query(store, "SELECT count(*) FROM customers WHERE email = 'chunked@example.com'") == [(1,)]


@pytest.mark.parametrize(
    "name, head, expected",
    [
        ("request line of 20 KB", f"GET /api/customers?q={'a' * 20000} HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        ("one 10 MB header", f"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 10 * MIB}\r\n\r\n", 431),
        (
            "20 000 headers",
            "GET /api/health HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: a\r\n" for i in range(20000)) + "\r\n",
            431,
        ),
    ],
)
def test_request_heads_over_the_limits_are_refused_while_parsed(server, name, head, expected):
    before = rss(server)
    status, headers, body, _ = raw_request(server, head.encode())
    assert_problem(status, headers, body, expected)
    assert rss(server) - before < 16 * MIB, name
    assert requests.get(f"{server.base}/api/health", timeout=5).status_code == 200


J = {"Content-Type": "application/json", **AUTH}
NEW_ORDER = '{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'

# (name, method, path, headers, body, status, field): every one a short 4xx problem naming the field.
MALFORMED = [
    ("NUL in a body string", "POST", "/api/customers", J, '{"name":"a\\u0000b","email":"a@b.io"}', 400, "name"),
    ("NUL in the query", "GET", "/api/customers?q=a%00b", AUTH, None, 400, "q"),
    ("lone surrogate", "POST", "/api/customers", J, '{"name":"\\ud800","email":"a@b.io"}', 400, "name"),
    ("not UTF-8", "POST", "/api/customers", J, b'{"name":"\xff\xfe","email":"a@b.io"}', 400, "body"),
    ("binary PATCH", "PATCH", "/api/products/1", J, bytes(range(256)), 400, "body"),
    # Longer than any valid customer: refused by its length, unparsed (validation.py).
    ("JSON 100 000 deep", "POST", "/api/customers", J, "[" * 100000 + "]" * 100000, 413, "body"),
    ("JSON 5 000 deep", "POST", "/api/customers", J, "[" * 5000 + "]" * 5000, 400, "body"),
    (
        "JSON 500 deep in a member",
        "POST",
        "/api/orders",
        J,
        '{"customer_id":1,"lines":[{"product_id":1,"quantity":1,"x":' + "[" * 500 + "]" * 500 + "}]}",
        400,
        None,
    ),
    (
        "5000-digit integer in a body",
        "POST",
        "/api/products",
        J,
        '{"sku":"a","name":"b","price_cents":' + "9" * 5000 + ',"stock":1}',
        400,
        "body",
    ),
    ("NaN", "POST", "/api/products", J, '{"sku":"a","name":"b","price_cents":NaN,"stock":1}', 400, "body"),
    ("1e400", "POST", "/api/products", J, '{"sku":"a","name":"b","price_cents":1e400,"stock":1}', 400, "price_cents"),
    (
        "price over the maximum",
        "POST",
        "/api/products",
        J,
        '{"sku":"a","name":"b","price_cents":100000001,"stock":1}',
        400,
        "price_cents",
    ),
    (
        "id beyond bigint in a body",
        "POST",
        "/api/orders",
        J,
        '{"customer_id":9223372036854775808,"lines":[{"product_id":1,"quantity":1}]}',
        400,
        "customer_id",
    ),
    ("5000-digit path id", "GET", "/api/customers/" + "9" * 5000, AUTH, None, 400, "customer_id"),
    ("id beyond bigint in the path", "GET", "/api/customers/9223372036854775808", AUTH, None, 400, "customer_id"),
    ("after beyond int64", "GET", "/api/customers?after=9223372036854775808", AUTH, None, 400, "after"),
    ("5000-digit after", "GET", "/api/customers?after=" + "9" * 5000, AUTH, None, 400, "after"),
    ("non-numeric id", "GET", "/api/customers/abc", AUTH, None, 400, "customer_id"),
    ("date out of range", "GET", "/api/dashboard?to=0000-01-01", AUTH, None, 400, "to"),
    ("an email the format refuses", "POST", "/api/customers", J, '{"name":"a","email":"x@y.io*"}', 400, "email"),
    ("a local part over 64", "POST", "/api/customers", J, '{"name":"a","email":"' + "x" * 65 + '@y.io"}', 400, "email"),
    ("200 KB name", "POST", "/api/customers", J, '{"name":"' + "n" * 200000 + '","email":"a@b.io"}', 413, "body"),
    ("2 KB name", "POST", "/api/customers", J, '{"name":"' + "n" * 2000 + '","email":"a@b.io"}', 400, "name"),
    ("unknown member", "POST", "/api/customers", J, '{"name":"a","email":"a@b.io","' + "k" * 5000 + '":1}', 400, None),
    (
        "10 KB Idempotency-Key",
        "POST",
        "/api/orders",
        {**J, "Idempotency-Key": "k" * 10000},
        NEW_ORDER,
        400,
        "Idempotency-Key",
    ),
    (
        "5 KB consistency token",
        "GET",
        "/api/products",
        {"X-Consistency-Token": "x" * 5000},
        None,
        400,
        "X-Consistency-Token",
    ),
    ("unknown query parameter", "GET", "/api/products?" + "z" * 3000 + "=1", {}, None, 400, None),
    ("text/plain body", "POST", "/api/customers", {**AUTH, "Content-Type": "text/plain"}, "hi", 415, None),
    ("no Content-Type", "POST", "/api/customers", AUTH, '{"name":"a","email":"a@b.io"}', 415, None),
    ("Content-Length not a number", "GET", "/api/health", {"Content-Length": "abc"}, None, 400, None),
]


@pytest.mark.parametrize(
    "name, method, path, headers, body, status, field", MALFORMED, ids=[case[0] for case in MALFORMED]
)
def test_malformed_input_is_a_short_4xx_problem(server, store, name, method, path, headers, body, status, field):
    answer = requests.request(method, server.base + path, headers=headers, data=body, timeout=10)
    problem = assert_problem(
        answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.content, status, field
    )
    assert len(problem["detail"]) <= 400


def test_no_5xx_and_no_traceback_in_the_server_log(server):
    """Run after the malformed inputs (same module server): none of them reached a 500."""

    def access_lines() -> int:
        return sum('"store_api.access"' in line for line in server.output().splitlines())

    before = access_lines()
    for case in MALFORMED:
        requests.request(case[1], server.base + case[2], headers=case[3], data=case[4], timeout=10)
    # The log writers flush every 20 ms: until every one of these requests is logged.
    wait_until(lambda: access_lines() >= before + len(MALFORMED), timeout=5, message="the requests logged")
    log = server.output()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    statuses = [json.loads(line)["status"] for line in log.splitlines() if '"store_api.access"' in line]
    assert statuses and max(statuses) < 500
    assert max(len(line) for line in log.splitlines()) < 2000, "a log line carries client input at length"


def test_every_error_has_the_one_shape(server, store, database_url):
    """Each 4xx the service renders, whoever renders it (our code, validation, security, routing)."""
    b = server.base
    cases = {
        400: requests.get(f"{b}/api/customers?limit=0", headers=AUTH),
        401: requests.get(f"{b}/api/customers/1"),
        403: requests.post(
            f"{b}/api/customers", json={"name": "a", "email": "a@b.io"}, headers={"Authorization": f"Bearer {READER}"}
        ),
        404: requests.get(f"{b}/api/customers/999", headers=AUTH),
        405: requests.put(f"{b}/api/customers/1", headers=AUTH),
        409: requests.post(f"{b}/api/customers", json={"name": "a", "email": "ada@example.com"}, headers=AUTH),
        413: requests.post(f"{b}/api/customers", data=b"x" * (2 * MIB), headers=J),
        415: requests.post(f"{b}/api/customers", data="x", headers={**AUTH, "Content-Type": "text/plain"}),
        422: None,
    }
    key = {**J, "Idempotency-Key": "shape-422"}
    requests.post(f"{b}/api/orders", data=NEW_ORDER, headers=key)
    cases[422] = requests.post(
        f"{b}/api/orders", headers=key, data='{"customer_id":1,"lines":[{"product_id":2,"quantity":1}]}'
    )
    unknown_route = requests.get(f"{b}/api/nowhere")
    for status, answer in [*cases.items(), (404, unknown_route)]:
        assert_problem(answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.content, status)
    assert cases[401].headers["WWW-Authenticate"].startswith("Bearer")
    assert cases[405].headers["Allow"] == "DELETE, GET, PATCH"
    assert requests.options(f"{b}/api/customers").headers["Allow"] == "GET, POST"


def test_every_5xx_has_the_one_shape(database_url):
    down = Gunicorn(
        f"postgresql://postgres@127.0.0.1:{free_port()}/{TEST_DB}", WEB_CONCURRENCY=1, DB_POOL_MIN_CONNECTIONS=0
    )
    try:
        answer = requests.get(f"{down.base}/api/customers/1", headers=AUTH, timeout=10)
    finally:
        down.stop()
    problem = assert_problem(answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.content, 503)
    assert problem["type"] == "/api/problems/database-unavailable" and int(answer.headers["Retry-After"]) >= 1


def _spec_operations():
    """(method, path with every id 1, secured) of each operation, from the spec: a new resource's
    operations are in these tests without anyone adding them."""
    from swagger_server.app import load_spec

    spec = load_spec()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, "/api" + re.sub(r"\{[^}]+\}", "1", path), bool(operation.get("security"))


def test_customer_data_needs_a_token_and_writes_need_the_write_scope(server, store):
    b = server.base
    reader = {"Authorization": f"Bearer {READER}"}
    operations = list(_spec_operations())
    assert len(operations) >= 17 and sum(secured for _, _, secured in operations) >= 12
    for method, path, secured in operations:
        anonymous = requests.request(method, b + path, json={} if method != "get" else None)
        if secured:
            assert anonymous.status_code == 401, (method, path)
        else:  # public: a read, answered without a token (the catalog, the probes)
            assert method == "get" and anonymous.status_code == 200, (method, path)
        if path.startswith("/api/keys"):  # the keys need the admin scope, reads too
            assert requests.request(method, b + path, json={}, headers=reader).status_code == 403, path
        elif method == "get":  # a read token reads (a 404 for a resource the store has no row 1 of)
            assert requests.get(b + path, headers=reader).status_code in (200, 404), path
        else:
            refused = requests.request(method, b + path, json={}, headers=reader)
            assert refused.status_code == 403, (method, path)
    hashed = {"Authorization": f"Bearer {HASHED}"}  # configured as its SHA-256 only
    assert requests.get(f"{b}/api/customers/1", headers=hashed).status_code == 200
    for token in (READER, HASHED):
        refused = requests.patch(
            f"{b}/api/customers/1", json={"name": "Nope"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert_problem(refused.status_code, {k.lower(): v for k, v in refused.headers.items()}, refused.content, 403)
    assert query(store, "SELECT name FROM customers WHERE id = 1") == [("Ada Lovelace",)]
    assert requests.get(f"{b}/api/customers/1", headers={"Authorization": f"Bearer {HASHED}x"}).status_code == 401


def test_the_spec_declares_the_scope_the_server_enforces():
    import yaml

    from swagger_server.security import required_scope
    from tests.support.servers import ROOT

    spec = yaml.safe_load((ROOT / "swagger" / "swagger.yaml").read_text())
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if operation.get("security"):
                # The keys' operations need `admin`, whatever their method; every other its method's.
                expected = "admin" if path.startswith("/keys") else required_scope(method)
                assert operation["x-required-scope"] == expected, (method, path)
                if expected != "read":
                    assert "403" in operation["responses"], (method, path)
            else:
                assert path.startswith(("/products", "/health")) and method == "get", (method, path)


def test_idempotency_keys_are_per_client_and_expire(server, store):
    b = server.base
    mine = {**J, "Idempotency-Key": "shared-key"}
    theirs = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {OTHER_WRITER}",
        "Idempotency-Key": "shared-key",
    }
    first = requests.post(f"{b}/api/orders", data=NEW_ORDER, headers=mine)
    assert first.status_code == 201
    # Another client's same key is its own: a new order, not a 422 or a replay of mine.
    other = requests.post(
        f"{b}/api/orders", headers=theirs, data='{"customer_id":2,"lines":[{"product_id":2,"quantity":1}]}'
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    replay = requests.post(f"{b}/api/orders", data=NEW_ORDER, headers=mine)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    # The server runs with a 1 s TTL: after it, the key is free again (a new order)...
    time.sleep(1.2)  # time passing: past the 1 s TTL
    again = requests.post(f"{b}/api/orders", data=NEW_ORDER, headers=mine)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    # ...and the same statement purged the other expired keys (theirs): nothing older than the TTL is left.
    assert query(store, "SELECT count(*) FROM idempotency_keys WHERE created_at < now() - interval '1 second'") == [
        (0,)
    ]
    assert query(store, "SELECT count(*) FROM idempotency_keys WHERE key = 'shared-key'") == [(1,)]


def test_metric_labels_take_methods_from_a_fixed_set(server):
    requests.request("PROPFIND", f"{server.base}/api/customers", headers=AUTH)
    metrics = requests.get(f"{server.base}/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith("store_api_requests_total{")]
    assert lines and not any("PROPFIND" in line for line in lines)
    assert any('method="other"' in line for line in lines)


def test_metrics_behind_a_token_or_on_their_own_port(database_url):
    guarded = Gunicorn(database_url, WEB_CONCURRENCY=1, API_METRICS_TOKEN="metrics-secret")
    try:
        refused = requests.get(f"{guarded.base}/metrics")
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        ok = requests.get(f"{guarded.base}/metrics", headers={"Authorization": "Bearer metrics-secret"})
        assert ok.status_code == 200 and "store_api_requests_total" in ok.text
    finally:
        guarded.stop()
    port = free_port()
    separate = Gunicorn(database_url, WEB_CONCURRENCY=1, API_METRICS_PORT=port)
    try:
        assert requests.get(f"{separate.base}/metrics").status_code == 404
        assert requests.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/api/products").status_code == 404
        assert requests.get(f"{separate.base}/api/products").status_code == 200
    finally:
        separate.stop()


def test_an_empty_token_list_is_a_warning_at_start(database_url):
    tokenless = Gunicorn(database_url, WEB_CONCURRENCY=1, API_TOKENS="")
    try:
        assert requests.get(f"{tokenless.base}/api/customers/1", headers=AUTH).status_code == 401
    finally:
        _, log = tokenless.stop()
    assert "no API tokens configured" in log


def test_a_thousand_half_open_slow_clients_do_not_stop_the_service(server):
    """1000 connections that send half a request head and wait hold no handler thread and no
    connection: the service keeps answering while they are open (uvicorn parses heads on the event
    loop; nothing reaches the app before a head is complete)."""

    def timed_health() -> float:
        start = time.monotonic()
        assert requests.get(f"{server.base}/api/health", timeout=2).status_code == 200
        return time.monotonic() - start

    baseline = sorted(timed_health() for _ in range(30))[15]
    slow = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        during = sorted(timed_health() for _ in range(30))[15]
        orders = requests.get(f"{server.base}/api/customers/1", headers=AUTH, timeout=2)
        assert orders.status_code in (200, 404)
    finally:
        for sock in slow:
            sock.close()
    print(f"p50 of /api/health: {baseline * 1000:.1f} ms alone, {during * 1000:.1f} ms beside 1000 slow clients")
