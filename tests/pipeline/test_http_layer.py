"""The HTTP layer on raw sockets, against real gunicorn: one reading of every request, bodies before
threads, stalled clients cut, and signals that tell the truth (issue 19).

A client library normalises exactly what an attacker does not (header case, repetition, framing), so
every request here is written byte by byte (tests/support/rawhttp.py). Every answer any test in this module
receives is tallied by status; the last test compares the tally with the server's /metrics and
checks the server's log for tracebacks and 500s.
"""

from __future__ import annotations

import collections
import json
import statistics
import subprocess
import sys
import time

import pytest
import requests

from harness.waiting import wait_until
from swagger_server.pipeline.gate import SINGLE, parse_media_type
from tests.support.auth import AUTH_LINE, TOKEN
from tests.support.database import query
from tests.support.rawhttp import Answer, Connection, Tally, request_bytes, statuses
from tests.support.servers import live_server
from tests.support.timing import within

HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
AUTH = AUTH_LINE
JSON = "Content-Type: application/json"
TALLY = Tally()  # every answer clients in this module got, compared with /metrics by the last test
RECEIVED = TALLY.received


server = live_server(
    "server",
    tally=TALLY,
    API_HEAD_TIMEOUT=HEAD_TIMEOUT,
    API_BODY_TIMEOUT=BODY_TIMEOUT,
    WEB_THREADS=4,
    DB_POOL_TIMEOUT=2,
)


def send(server, data: bytes, answers: int = 1, timeout: float = 10.0) -> Answer:
    return TALLY.send(server, data, answers, timeout)


def post(server, path: str, body, *headers, auth: bool = True) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return send(server, request_bytes("POST", path, [*([AUTH] if auth else []), *headers], raw))


def _waiting_on_a_lock(conn) -> bool:
    """A backend of this database is waiting for a lock (a request blocked on a row the test holds)."""
    found = query(
        conn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return found[0][0] > 0


# -- one reading of Content-Type -----------------------------------------------------------------------
FORBIDDEN_CUSTOMER = {"name": 5, "email": "no-at-sign"}
FORBIDDEN_PRODUCT = {"sku": "SKU-X", "name": "Costly", "price_cents": 10**12, "stock": 1}

JSON_SPELLINGS = [
    "application/json",
    "Application/JSON",
    "APPLICATION/JSON",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    'application/json; charset="utf-8"',
    "application/json ; charset=utf-8",
    "application/JSON; Charset=Utf-8",
    "application/json;",
    "application/json; profile=x",
]
OTHER_SPELLINGS = [
    "text/plain",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/problem+json",
    "application/x-www-form-urlencoded",
    "application/json, text/plain",
    "application/json/x",
    "application / json",
    "application",
    "",
    "*/*",
    "application/*",
    "application/json; charset=utf-8; charset=latin-1",
    'application/json; charset="utf-8',
    "application/json; =utf-8",
    "application/json\x7f",
    "application/json\xff",
    "application/jsonx",
    "json",
]


@pytest.mark.parametrize("spelling", JSON_SPELLINGS)
def test_every_spelling_of_json_validates_exactly_like_application_json(server, store, spelling):
    canonical = post(server, "/api/customers", FORBIDDEN_CUSTOMER, JSON)
    assert canonical.status == 400 and canonical.problem()["field"] == "name"
    answer = post(server, "/api/customers", FORBIDDEN_CUSTOMER, f"Content-Type: {spelling}")
    assert (answer.status, answer.problem()) == (canonical.status, canonical.problem())
    answer = post(server, "/api/products", FORBIDDEN_PRODUCT, f"Content-Type: {spelling}")
    assert answer.status == 400 and answer.problem()["field"] == "price_cents"
    good = post(server, "/api/customers", {"name": "Eve", "email": "eve@example.com"}, f"Content-Type: {spelling}")
    assert good.status == 201, good.body
    assert json.loads(good.body)["email"] == "eve@example.com"
    _nothing_forbidden_stored(store)


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS)
def test_any_other_content_type_is_refused_with_a_4xx_and_nothing_is_stored(server, store, spelling):
    for path, body in (("/api/customers", FORBIDDEN_CUSTOMER), ("/api/products", FORBIDDEN_PRODUCT)):
        answer = post(server, path, body, f"Content-Type: {spelling}".encode("latin-1"))
        assert answer.status in (400, 415), (spelling, answer.status, answer.body)
        assert answer.problem()["status"] == answer.status
    _nothing_forbidden_stored(store)


@pytest.mark.parametrize("order", [("text/plain", "application/json"), ("application/json", "text/plain")])
def test_content_type_twice_is_400_whichever_comes_first(server, store, order):
    for path, body in (("/api/customers", FORBIDDEN_CUSTOMER), ("/api/products", FORBIDDEN_PRODUCT)):
        answer = post(server, path, body, *(f"Content-Type: {value}" for value in order))
        assert answer.status == 400
        assert answer.problem()["field"] == "Content-Type"
        assert answer.closed
    _nothing_forbidden_stored(store)


def _nothing_forbidden_stored(db) -> None:
    assert query(db, "SELECT count(*) FROM customers WHERE position('@' in email) = 0 OR name ~ '^[0-9]+$'") == [(0,)]
    assert query(db, "SELECT count(*) FROM products WHERE price_cents > 100000000") == [(0,)]


def test_the_media_type_parser_follows_rfc_9110():
    assert parse_media_type(b'Application/JSON ; Charset="UTF-8"') == ("application/json", {"charset": "UTF-8"})
    assert parse_media_type(b'application/json; a="x\\"y"') == ("application/json", {"a": 'x"y'})
    for bad in (b"application/json; a=1; A=2", b"application/json x", b"/json", b"application/", b"a/b/c"):
        assert parse_media_type(bad) is None, bad


# -- repeated and underscored headers ------------------------------------------------------------------
REPEATED = {
    "Content-Type": ("application/json", "application/json"),
    "Authorization": (f"Bearer {TOKEN}", "Bearer nope"),
    "Idempotency-Key": ("k1", "k2"),
    "X-Request-ID": ("a1", "a2"),
    "X-Consistency-Token": ("0/1", "0/2"),
    "Origin": ("http://localhost:3000", "http://evil.example"),
    "Host": ("t", "evil.example"),
    "Content-Length": ("2", "2"),
    "Transfer-Encoding": ("chunked", "chunked"),
}


def test_every_single_header_the_gate_knows_is_tested_here():
    assert {name.lower().encode() for name in REPEATED} == set(SINGLE)


@pytest.mark.parametrize("name", sorted(REPEATED))
@pytest.mark.parametrize("case", ["same", "lower-upper"])
def test_a_header_that_must_be_single_and_appears_twice_is_400_and_the_connection_closed(server, store, name, case):
    first, second = REPEATED[name]
    spelled = (name, name.upper()) if case == "lower-upper" else (name, name)
    headers = [f"{spelled[0]}: {first}", f"{spelled[1]}: {second}"]
    if name not in ("Authorization",):
        headers.append(AUTH)
    if name not in ("Content-Type",):
        headers.append(JSON)
    body = b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'
    if name in ("Content-Length", "Transfer-Encoding"):
        body = b"{}" if name == "Content-Length" else b"2\r\n{}\r\n0\r\n\r\n"
    data = request_bytes("POST", "/api/orders", headers, body, host=None if name == "Host" else "t")
    answer = send(server, data)
    assert answer.status == 400, (name, answer.body)
    assert answer.closed
    assert query(store, "SELECT count(*) FROM orders") == [(2,)]  # the store's two, nothing new


def test_a_header_spelt_with_underscore_is_read_by_nobody(server, store):
    order = b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'
    # The observer works: the same key spelt right makes the second order a replay of the first.
    spelt = [post(server, "/api/orders", order, JSON, "Idempotency-Key: right-1") for _ in range(2)]
    assert [a.status for a in spelt] == [201, 200]
    underscored = [post(server, "/api/orders", order, JSON, "Idempotency_Key: under-1") for _ in range(2)]
    assert [a.status for a in underscored] == [201, 201]  # no reader took it for Idempotency-Key
    assert json.loads(underscored[0].body)["id"] != json.loads(underscored[1].body)["id"]


def test_an_http_1_1_request_without_host_is_400(server):
    answer = send(server, request_bytes("GET", "/api/health", host=None))
    assert answer.status == 400 and answer.problem()["field"] == "Host"


# -- framing: smuggling shapes, pipelining, early closes -----------------------------------------------
SMUGGLED = b"GET /api/customers/1 HTTP/1.1\r\nHost: t\r\n\r\n"  # would answer 401 if it were read
SMUGGLING = {
    "CL and TE": [b"Content-Length: 4", b"Transfer-Encoding: chunked"],
    "TE and CL": [b"Transfer-Encoding: chunked", b"Content-Length: 4"],
    "TE chunked, identity": [b"Transfer-Encoding: chunked, identity", b"Content-Length: 4"],
    "TE xchunked": [b"Transfer-Encoding: xchunked"],
    "TE with tab": [b"Transfer-Encoding:\tchunked", b"Content-Length: 4"],
    "TE obs-fold": [b"Transfer-Encoding: identity", b" chunked"],
    "CL plus": [b"Content-Length: +4"],
    "CL negative": [b"Content-Length: -4"],
    "CL list": [b"Content-Length: 4, 4"],
    "CL twice": [b"Content-Length: 4", b"Content-Length: 40"],
    "CL space inside": [b"Content-Length: 4 0"],
    "space before colon": [b"Content-Length : 4"],
    "NUL in a value": [b"X-Note: a\x00b", b"Content-Length: 4"],
    "bare LF head": None,
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
def test_ambiguous_framing_is_one_4xx_and_the_connection_closed(server, shape):
    if SMUGGLING[shape] is None:
        data = b"POST /api/orders HTTP/1.1\nHost: t\nContent-Length: 4\n\n{}\r\n" + SMUGGLED
    else:
        head = [AUTH.encode(), JSON.encode(), *SMUGGLING[shape]]
        data = request_bytes("POST", "/api/orders", head, b"0\r\n\r\n" + SMUGGLED)
    answer = send(server, data, answers=2)
    assert 400 <= answer.status < 500, (shape, answer.status, answer.body)
    assert answer.problem()["status"] == answer.status
    assert answer.more == [], f"{shape}: a second request was read from the same bytes"
    assert answer.closed


def test_pipelined_requests_are_answered_in_order(server, store):
    data = b"".join(
        [
            request_bytes("GET", "/api/products/1"),
            request_bytes("POST", "/api/customers", [AUTH, JSON], b'{"name":"Pip","email":"pip@example.com"}'),
            request_bytes("GET", "/api/products/2"),
            request_bytes("GET", "/api/customers/1"),  # no token
        ]
    )
    answer = send(server, data, answers=4)
    assert [answer.status, *(a.status for a in answer.more)] == [200, 201, 200, 401]
    assert json.loads(answer.body)["id"] == 1 and json.loads(answer.more[1].body)["id"] == 2


def test_a_client_that_closes_early_is_logged_499_and_never_500(server, store):
    before = statuses(server)
    conn = Connection(server.port)
    conn.send(request_bytes("POST", "/api/customers", [AUTH, JSON, "Content-Length: 100"], b'{"name":'))
    time.sleep(0.2)  # not a poll: the server reads part of a body before the client leaves
    conn.close()
    wait_until(lambda: statuses(server)[499] > before[499], timeout=5, message="the 499 counted")
    assert statuses(server)[499] == before[499] + 1
    RECEIVED[499] += 1  # what the server rightly records for it; the client received nothing


def test_a_client_gone_with_pipelined_requests_in_flight_leaves_no_traceback(server, store):
    """uvicorn marks only the newest request on a connection disconnected; the one still running
    then wrote to a closed transport (found by make fuzz-http)."""
    query(store, "BEGIN")
    query(store, "SELECT * FROM products WHERE id = 1 FOR UPDATE")  # the order waits on this row
    try:
        conn = Connection(server.port)
        order = b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'
        key = "Idempotency-Key: gone-1"
        conn.send(request_bytes("POST", "/api/orders", [AUTH, JSON, key], order) + request_bytes("GET", "/api/health"))
        # The order is in its handler, waiting for the row; the GET is queued behind it.
        wait_until(lambda: _waiting_on_a_lock(store), timeout=5, message="the order waiting on the row")
        conn.close()
        time.sleep(0.3)  # not a poll: the server notices the closed connection while the order waits
    finally:
        query(store, "ROLLBACK")
    # The observer: the order ran to its end (it is recorded, with the status its handler sent, which
    # the client that left never received), and only then could its answer meet the closed socket.
    wait_until(
        lambda: query(store, "SELECT count(*) FROM idempotency_keys WHERE key = 'gone-1'") != [(0,)],
        timeout=5,
        message="the order to complete",
    )
    RECEIVED[201] += 1  # recorded by the server as sent; see the docstring
    time.sleep(0.3)  # its answer is sent (into the closed socket) just after the commit
    assert "Traceback" not in server.output()


def test_a_refusal_is_sent_after_the_answer_to_an_earlier_pipelined_request(server, store):
    """A malformed request behind one still running is answered after it, in order: sent first, the
    refusal would be read as the answer to the earlier request."""
    query(store, "BEGIN")
    query(store, "SELECT * FROM products WHERE id = 1 FOR UPDATE")
    conn = Connection(server.port)
    try:
        order = b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'
        conn.send(
            request_bytes("POST", "/api/orders", [AUTH, JSON], order)
            + b"GET /api/health HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"
        )
        # The order waits on the row; the broken head behind it is refused meanwhile.
        wait_until(lambda: _waiting_on_a_lock(store), timeout=5, message="the order waiting on the row")
    finally:
        query(store, "ROLLBACK")
    first, second = conn.read_answer(), conn.read_answer()
    conn.close()
    RECEIVED.update([first.status, second.status])
    assert (first.status, second.status) == (201, 400)
    assert json.loads(first.body)["customer_id"] == 1


# -- sizes: the head limit counts the head only ---------------------------------------------------------
def test_a_body_of_tens_of_kib_in_one_write_is_not_mistaken_for_a_large_head(server, store):
    # 30 KiB: within what an order may take (45 016 bytes: validation.py), past any head limit.
    padded = json.dumps({"customer_id": 1, "lines": [], "x": "a" * 30_000}).encode()
    answer = post(server, "/api/orders", padded, JSON)
    assert answer.status == 400 and answer.problem()["field"] == "x"  # read, and refused by the schema
    # The connection stays good: a request after it is served (a refusal would come in its place,
    # queued behind the answers already due).
    conn = Connection(server.port)
    conn.send(request_bytes("POST", "/api/orders", [AUTH, JSON], padded) + request_bytes("GET", "/api/health"))
    first, second = conn.read_answer(), conn.read_answer()
    conn.send(request_bytes("GET", "/api/health"))
    third = conn.read_answer()
    conn.close()
    RECEIVED.update(a.status for a in (first, second, third) if a is not None)
    assert [a.status if a else None for a in (first, second, third)] == [400, 200, 200]
    orders = b"".join(
        request_bytes("POST", "/api/orders", [AUTH, JSON], b'{"customer_id":1,"lines":[' + b" " * 30_000 + b"]}")
        for _ in range(3)
    )
    pipelined = send(server, orders, answers=3)
    assert [pipelined.status, *(a.status for a in pipelined.more)] == [400, 400, 400]  # minItems, not 431
    big_head = send(server, request_bytes("GET", "/api/health", ["X-Pad: " + "a" * 40_000]))
    assert big_head.status == 431  # the observer: a head that large is refused


# -- stalled clients -------------------------------------------------------------------------------------
@pytest.mark.timing
def test_a_stalled_head_gets_408_within_its_timeout_and_is_closed(server):
    answer = send(server, b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert answer.status == 408
    # A call_later timer on the event loop: late by at most the loop's lag (milliseconds here); the
    # upper margin covers the connection's set-up and the answer's trip on a busy CI machine.
    assert HEAD_TIMEOUT * 0.9 <= answer.elapsed <= within(HEAD_TIMEOUT), answer.elapsed
    assert answer.closed


@pytest.mark.timing
def test_a_connection_that_sends_nothing_is_closed_at_the_head_timeout(server):
    """No byte after accept: the same deadline as a head that stops half way (the timer starts at
    accept), for every such connection at once. The observer: one that sends a request is answered."""
    import socket

    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    started = time.monotonic()
    answers = []
    for sock in silent:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        answers.append((data, time.monotonic() - started))
        sock.close()
    RECEIVED[408] += len(answers)
    for data, elapsed in answers:
        assert data.startswith(b"HTTP/1.1 408 "), data[:80]
        assert elapsed <= within(HEAD_TIMEOUT), elapsed
    assert HEAD_TIMEOUT * 0.9 <= answers[0][1], answers[0][1]
    assert send(server, request_bytes("GET", "/api/health", [])).status == 200


@pytest.mark.timing
@pytest.mark.parametrize("method,path", [("POST", "/api/products"), ("GET", "/api/health/ready")])
def test_a_stalled_body_gets_408_within_its_timeout_and_is_closed(server, method, path):
    head = request_bytes(method, path, [JSON, "Content-Length: 100"], b'{"sku":')
    answer = send(server, head)
    assert answer.status == 408 and answer.problem()["field"] == "body"
    assert BODY_TIMEOUT * 0.9 <= answer.elapsed <= within(BODY_TIMEOUT), answer.elapsed
    assert answer.closed


def _ready_latency(session: requests.Session, base: str, n: int = 30) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = session.get(f"{base}/api/health/ready", timeout=5)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
        RECEIVED[200] += 1
    return statistics.median(times)


@pytest.mark.timing  # a held thread costs the body timeout (3 s); the bound is 20 ms above idle
def test_a_hundred_stalled_bodies_hold_no_thread_and_readiness_stays_fast(server):
    session = requests.Session()
    _ready_latency(session, server.base, 10)  # warm: both workers' pools and the session
    idle = _ready_latency(session, server.base)
    stalled = []
    for i in range(100):
        conn = Connection(server.port)
        method, path = ("GET", "/api/health/ready") if i % 2 else ("POST", "/api/products")
        conn.send(request_bytes(method, path, [JSON, "Content-Length: 1000"], b'{"a":'))
        stalled.append(conn)
    time.sleep(0.3)  # the workers have read those heads (each is one write on loopback)
    under_attack = _ready_latency(session, server.base)
    # Median of 30 on a kept-alive connection. Were the stalled bodies read in handler threads (4 a
    # worker, 50 stalled POSTs), readiness would wait for a thread until BODY_TIMEOUT (3 s); 20 ms
    # above idle is 150 times below that, and above what a parallel `make test` on 2 cores moves a
    # millisecond median (seen: 1.4 ms idle, 2.9 ms with the 100 sockets open beside other modules).
    assert under_attack <= idle + 0.02, (idle, under_attack)
    # The positive marker: every stalled client was still waiting, and is now cut with a 408.
    for conn in stalled:
        answer = conn.read_answer()
        assert answer is not None and answer.status == 408, answer
        RECEIVED[408] += 1
        conn.close()


# -- encodings -----------------------------------------------------------------------------------------
ENCODINGS = {
    "query not UTF-8": request_bytes("GET", "/api/customers?q=%FF%FE", [AUTH]),
    "query NUL": request_bytes("GET", "/api/customers?q=%00", [AUTH]),
    "query newline": request_bytes("GET", "/api/customers?q=%0A", [AUTH]),
    "Arabic digits in the query": request_bytes("GET", "/api/customers?limit=%D9%A1", [AUTH]),
    "space before a number": request_bytes("GET", "/api/customers?limit=%201", [AUTH]),
    "underscore in a number": request_bytes("GET", "/api/customers?limit=1_0", [AUTH]),
    "a single parameter twice": request_bytes("GET", "/api/customers?limit=1&limit=2", [AUTH]),
    "path not UTF-8": request_bytes("GET", "/api/customers/%FF", [AUTH]),
    "Arabic digit in the path": request_bytes("GET", "/api/customers/%D9%A1", [AUTH]),
    "token not UTF-8": request_bytes("GET", "/api/customers/1", [b"Authorization: Bearer \xff\xfe"]),
    "consistency token not ASCII": request_bytes("GET", "/api/customers/1", [AUTH, b"X-Consistency-Token: \xff/1"]),
    "idempotency key not ASCII": request_bytes(
        "POST", "/api/orders", [AUTH, JSON, b"Idempotency-Key: \xc3\xa9"], b'{"customer_id":1,"lines":[]}'
    ),
    "body not UTF-8": request_bytes("POST", "/api/customers", [AUTH, JSON], b'{"name":"\xff","email":"a@b.co"}'),
    "body with a BOM": request_bytes(
        "POST", "/api/customers", [AUTH, JSON], b'\xef\xbb\xbf{"name":"a","email":"a@b.co"}'
    ),
    "body in UTF-16": request_bytes(
        "POST", "/api/customers", [AUTH, JSON], '{"name":"a","email":"a@b.co"}'.encode("utf-16")
    ),
    "NUL in a string": request_bytes("POST", "/api/customers", [AUTH, JSON], b'{"name":"a\\u0000","email":"a@b.co"}'),
    "lone surrogate": request_bytes("POST", "/api/customers", [AUTH, JSON], b'{"name":"a\\ud800","email":"a@b.co"}'),
    "newline in a name": request_bytes("POST", "/api/customers", [AUTH, JSON], b'{"name":"a\\n","email":"a@b.co"}'),
    "email ending in a newline": request_bytes(
        "POST", "/api/customers", [AUTH, JSON], b'{"name":"a","email":"ada@example.com\\n"}'
    ),
    "number too large for a float": request_bytes("PATCH", "/api/products/1", [AUTH, JSON], b'{"price_cents":1e400}'),
    "NaN": request_bytes("PATCH", "/api/products/1", [AUTH, JSON], b'{"price_cents":NaN}'),
    "Arabic digit in a dashboard query": request_bytes("GET", "/api/dashboard?top=%D9%A5", [AUTH]),
}


@pytest.mark.parametrize("case", sorted(ENCODINGS))
def test_mixed_encodings_are_a_short_4xx(server, store, case):
    data = ENCODINGS[case]
    answer = send(server, data)
    assert 400 <= answer.status < 500, (data[:100], answer.status, answer.body)
    assert len(answer.body) < 600
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]


# -- answers the service renders itself ------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,status", [("/", 302), ("/api", 308), ("/api/ui", 308), ("/api/customers/", 404), ("/api/ui/none.js", 404)]
)
def test_redirects_and_unknown_paths_are_problems_with_a_path_only_location(server, path, status):
    answer = send(server, request_bytes("GET", path, [AUTH], host="evil.example"))
    assert answer.status == status
    assert answer.problem()["status"] == status
    location = answer.header("location")
    assert location is None or (location.startswith("/") and not location.startswith("//")), location
    assert "evil" not in (location or "")


def test_a_refused_cors_preflight_is_a_problem(server):
    answer = send(
        server,
        request_bytes(
            "OPTIONS", "/api/customers", ["Origin: http://evil.example", "Access-Control-Request-Method: GET"]
        ),
    )
    assert answer.status == 400 and answer.problem()["detail"].startswith("Disallowed CORS")


def _health_during_a_flood(server, session, *paths) -> tuple[float, collections.Counter]:
    """The median time of GET /api/health from this client while another process floods `paths` (four
    threads), over at least 2 s and 30 samples; and the flood's answers by status."""
    # The floods run in a process of their own: as threads of this one they would hold this process's
    # GIL for turns of up to 5 ms each, and the delay measured would be this client's, not the server's.
    flood = subprocess.Popen(
        [sys.executable, "-c", _FLOOD, server.base, *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert flood.stdout.readline().strip() == "flooding"
    time.sleep(0.3)  # time passing: the flood is under way before measuring
    # At least 30 samples and at least 2 s of flood: 30 samples alone took 0.1-0.4 s, in which a loaded
    # machine's flood once got 4 answers through (the observer below wants more than 20: 10-15 a second).
    samples, until = [], time.monotonic() + 2.0
    while len(samples) < 30 or time.monotonic() < until:
        samples.append(_timed(session, f"{server.base}/api/health"))
    out, _ = flood.communicate("", timeout=30)  # closing its stdin stops it
    counts = collections.Counter({int(k): v for k, v in json.loads(out).items()})
    RECEIVED[200] += sum(counts.values())
    return statistics.median(samples), counts


@pytest.mark.timing
def test_the_spec_is_rendered_once_and_a_flood_of_it_leaves_health_fast(server):
    session = requests.Session()
    # The control: the same flood of a cheap answer (health itself), under whatever else this machine
    # runs at the time (make test runs other modules beside this one).
    control, _ = _health_during_a_flood(server, session, "/api/health", "/api/health")
    busy, counts = _health_during_a_flood(server, session, "/api/openapi.yaml", "/api/openapi.json")
    assert set(counts) == {200} and sum(counts.values()) > 20

    # On the server: each spec answer after a worker's first is a copy from memory (about 0.1 ms in
    # the access log; rendering the YAML takes 30-40 ms of the event loop). 5 ms is far from both.
    def spec_lines():
        lines = (json.loads(line) for line in server.stdout().splitlines() if line.startswith('{"ts"'))
        return [entry["duration_ms"] for entry in lines if entry.get("path", "").startswith("/api/openapi.")]

    # The log writers flush every 20 ms: until every answer the flood received is logged.
    wait_until(lambda: len(spec_lines()) >= sum(counts.values()), timeout=5, message="the spec answers logged")
    spec = spec_lines()
    # Rendered once: the typical answer is a copy (median under 5 ms, against 30-40 ms to render),
    # and at most the four first renderings (2 workers x 2 documents) took a rendering's time, give or
    # take 2 % of answers that waited their turn behind the floods on this 2-core machine (a copy
    # once took 6.9 ms here). Rendering every time would put the median and most answers above 20 ms.
    assert statistics.median(spec) < 5, sorted(spec)[-10:]
    slow = [d for d in spec if d >= 20]
    assert len(slow) <= 4 + 0.02 * len(spec), sorted(spec)[-10:]
    # From this client: health waits at most its turn behind spec answers from memory, as behind the
    # control's health answers, not behind 35 ms renderings of the YAML (which would add half of one,
    # about 17 ms, to the median). Against the control, not against an idle server: beside the other
    # modules of a parallel run, health alone once took 4 ms and 18 ms under any flood.
    assert busy <= control + 0.010, (control, busy)


# Four threads asking for the given paths in a loop until stdin closes; prints {status: count}.
_FLOOD = """
import collections, json, sys, threading, requests
base, paths = sys.argv[1], sys.argv[2:]
stop, counts = threading.Event(), collections.Counter()
def flood(path):
    with requests.Session() as s:
        while not stop.is_set():
            counts[s.get(base + path, timeout=10).status_code] += 1
threads = [threading.Thread(target=flood, args=(p,)) for p in paths * 2]
for t in threads:
    t.start()
print("flooding", flush=True)
sys.stdin.read()
stop.set()
for t in threads:
    t.join(15)
print(json.dumps(counts))
"""


def _timed(session, url) -> float:
    start = time.perf_counter()
    assert session.get(url, timeout=5).status_code == 200
    RECEIVED[200] += 1
    return time.perf_counter() - start


def test_the_servers_signals_agree_with_what_its_clients_received(server):
    """Last in this module: what /metrics counted is what the clients above received."""
    TALLY.check(server)
