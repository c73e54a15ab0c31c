"""The edges beside the schema, on raw sockets against real gunicorn (issue 30): chunked trailers,
protocol upgrades, redirects built from Host, conditional requests to the letter of RFC 9110 §13, and
one identity per text.

Every request is written byte by byte (tests/support/rawhttp.py); every answer is tallied, and the last test
compares the tally with /metrics and reads the server's log for tracebacks, 500s and long lines.
"""

from __future__ import annotations

import json
import select
import socket
import time
import unicodedata
import uuid

import psutil
import pytest

from tests.support.auth import AUTH_LINE
from tests.support.database import query
from tests.support.rawhttp import Answer, Connection, Tally, request_bytes
from tests.support.servers import live_server

AUTH = AUTH_LINE
JSON = "Content-Type: application/json"
TALLY = Tally()  # every answer clients in this module got, compared with /metrics by the last test
RECEIVED = TALLY.received
MAX_HEADER_BYTES = 32768  # [API] max_header_bytes, the default


server = live_server("server", tally=TALLY, WEB_THREADS=4, DB_POOL_TIMEOUT=2)


def send(server, data: bytes, answers: int = 1) -> Answer:
    return TALLY.send(server, data, answers)


def chunked(method: str, path: str, body: bytes, headers=(), trailers: bytes = b"") -> tuple[bytes, bytes]:
    """(head and body up to the last chunk's size line, what follows: trailer fields and the end)."""
    head = request_bytes(method, path, [*headers, JSON, "Transfer-Encoding: chunked"])
    return head + b"%x\r\n%s\r\n0\r\n" % (len(body), body), trailers + b"\r\n"


def new_customer() -> tuple[dict, bytes]:
    email = f"t{uuid.uuid4().hex[:12]}@example.com"
    customer = {"name": "Trailer Test", "email": email}
    return customer, json.dumps(customer).encode()


# -- trailers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("late", [False, True], ids=["one-write", "trailer-later"])
def test_an_authorization_trailer_never_authenticates(server, db, late):
    customer, body = new_customer()
    first, rest = chunked("POST", "/api/customers", body, trailers=f"{AUTH}\r\n".encode())
    conn = Connection(server.port)
    try:
        if late:
            conn.send(first)
            time.sleep(0.3)  # pacing: the trailer arrives in a later read than the head
            conn.send(rest)
        else:
            conn.send(first + rest)
        answer = conn.read_answer()
    finally:
        conn.close()
    RECEIVED[answer.status] += 1
    assert answer.status == 401, (answer.status, answer.body[:200])
    assert query(db, "SELECT count(*) FROM customers WHERE email = %s", (customer["email"],))[0][0] == 0
    # The observer: the same bytes with Authorization in the head are served.
    customer, body = new_customer()
    first, rest = chunked("POST", "/api/customers", body, headers=[AUTH])
    assert send(server, first + rest).status == 201


def test_a_trailer_field_reaches_no_reader(server):
    # X-Request-ID is echoed when it is a header (the observer), never when it is a trailer.
    first, rest = chunked("POST", "/api/customers", new_customer()[1], headers=[AUTH, "X-Request-ID: from-head-1"])
    assert send(server, first + rest).header("x-request-id") == "from-head-1"
    first, rest = chunked(
        "POST", "/api/customers", new_customer()[1], headers=[AUTH], trailers=b"X-Request-ID: from-trailer-1\r\n"
    )
    answer = send(server, first + rest)
    assert answer.status == 201 and answer.header("x-request-id") != "from-trailer-1"


def test_pipelined_after_a_trailer_the_next_request_is_read_as_it_was_sent(server):
    first, rest = chunked("POST", "/api/customers", new_customer()[1], headers=[AUTH], trailers=b"X-Trailer: 1\r\n")
    answer = send(server, first + rest + request_bytes("GET", "/api/health"), answers=2)
    assert [answer.status, *[a.status for a in answer.more]] == [201, 200]


def _workers_rss_kib(server) -> int:
    return sum(psutil.Process(pid).memory_full_info().rss for pid in server.workers) // 1024


def _flood(port: int, prefix: bytes, filler: bytes, total: int) -> tuple[Answer | None, int]:
    """Send `prefix`, then `filler` until `total` bytes or an answer arrives; (the answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        sock.sendall(prefix)
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(filler)
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.settimeout(10)
        conn = Connection.__new__(Connection)
        conn.sock, conn.buffer, conn.eof = sock, b"", False
        return conn.read_answer(), sent
    finally:
        sock.close()


@pytest.mark.parametrize(
    "shape",
    ["one-huge-trailer", "many-trailer-fields", "huge-chunk-extension"],
)
def test_trailers_and_framing_over_the_head_limit_are_431_with_bounded_memory(server, shape):
    head = request_bytes("POST", "/api/customers", [AUTH, JSON, "Transfer-Encoding: chunked"])
    body = new_customer()[1]
    if shape == "one-huge-trailer":
        prefix, filler = head + b"%x\r\n%s\r\n0\r\nX-Big: " % (len(body), body), b"a" * 65536
    elif shape == "many-trailer-fields":
        prefix, filler = head + b"%x\r\n%s\r\n0\r\n" % (len(body), body), b"X-T: 1\r\n" * 8192
    else:
        prefix, filler = head + b"%x;ext=" % len(body), b"e" * 65536
    before = _workers_rss_kib(server)
    results = [_flood(server.port, prefix, filler, 24 << 20) for _ in range(6)]
    grown = _workers_rss_kib(server) - before
    print(f"{shape}: workers grew {grown} KiB; bytes sent before the answer: {[sent for _, sent in results]}")
    for answer, sent in results:
        assert answer is not None and answer.status == 431, (answer and answer.status, sent)
        RECEIVED[431] += 1
        assert answer.problem()["status"] == 431
        # Refused within a few reads of the limit, not after the 24 MiB.
        assert sent < 8 << 20, sent
    # Six connections once grew the workers by 100+ MiB each; now by at most a few reads' worth.
    assert grown < 24 * 1024, f"workers grew {grown} KiB"


@pytest.mark.parametrize("body", [b"null", b"5", b"true", b'"text"', b"[]"])
@pytest.mark.parametrize(
    "method, path", [("POST", "/api/customers"), ("PATCH", "/api/customers/1"), ("PATCH", "/api/products/1")]
)
def test_a_body_that_is_not_an_object_is_a_400_whatever_the_conditions(server, body, method, path):
    for conditions in ([], ['If-Match: "1"', 'If-None-Match: "1"']):
        answer = send(server, request_bytes(method, path, [AUTH, JSON, *conditions], body))
        assert answer.status == 400, (body, conditions, answer.status)


# -- protocol upgrades ----------------------------------------------------------------------------------------
UPGRADES = {
    "websocket": [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ],
    "h2c": ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"],
    "Upgrade-mixed-case": ["connection: keep-alive, UPGRADE", "upgrade: WebSocket"],
}


@pytest.mark.parametrize("kind", sorted(UPGRADES))
@pytest.mark.parametrize("path", ["/api/health", "/api/customers/1", "/nowhere"])
def test_a_protocol_upgrade_is_a_400_problem_and_the_connection_closed(server, kind, path):
    answer = send(server, request_bytes("GET", path, [AUTH, *UPGRADES[kind]]))
    assert answer.status == 400 and "upgrade" in answer.problem()["detail"]
    assert answer.closed


def test_connect_is_refused_like_an_upgrade(server):
    answer = send(server, b"CONNECT 127.0.0.1:5432 HTTP/1.1\r\nHost: 127.0.0.1:5432\r\n\r\n")
    assert answer.status == 400 and answer.closed


def test_an_upgrade_header_without_connection_upgrade_is_no_upgrade(server):
    answer = send(server, request_bytes("GET", "/api/health", ["Upgrade: websocket"]))
    assert answer.status == 200


# -- no redirect built from Host -----------------------------------------------------------------------------------
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
PATHS = [
    "/",
    "/api",
    "/api/ui",
    "/api/",
    "/api/customers/",
    "/api/products/1/",
    "/api/health/",
    "/nowhere/",
    "/api/ui/",
    "/api/ui/index.html/",  # under the UI's own router
    "/api/openapi.json/",
]


@pytest.mark.parametrize("method", METHODS)
def test_no_answer_carries_a_location_built_from_host(server, method):
    for path in PATHS:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
        headers = [AUTH, *([JSON] if body else [])]
        answer = send(server, request_bytes(method, path, headers, body, host="evil.example:666"))
        location = answer.header("location")
        assert answer.status < 500, (method, path, answer.status)
        assert location is None or (location.startswith("/") and not location.startswith("//")), (
            method,
            path,
            location,
        )
        assert "evil" not in json.dumps(answer.headers) + answer.body.decode("latin-1"), (method, path)


def test_the_api_base_answers_the_same_way_for_every_method(server):
    answers = {}
    for method in METHODS:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
        answer = send(
            server, request_bytes(method, "/api", [AUTH, *([JSON] if body else [])], body, host="evil.example:666")
        )
        answers[method] = (answer.status, answer.header("location"))
    assert set(answers.values()) == {(308, "/api/ui/")}, answers


# -- conditional requests (RFC 9110 §13) -------------------------------------------------------------------------
def _product(server, db) -> tuple[int, int]:
    sku = f"E-{uuid.uuid4().hex[:10]}"
    body = json.dumps({"sku": sku, "name": "Edge", "price_cents": 100, "stock": 5}).encode()
    answer = send(server, request_bytes("POST", "/api/products", [AUTH, JSON], body))
    assert answer.status == 201
    created = json.loads(answer.body)
    return created["id"], int(answer.header("etag").strip('"'))


def _price(db, product_id: int) -> int:
    return query(db, "SELECT price_cents FROM products WHERE id = %s", (product_id,))[0][0]


def _patch(server, product_id: int, *headers) -> Answer:
    body = json.dumps({"price_cents": 777}).encode()
    return send(server, request_bytes("PATCH", f"/api/products/{product_id}", [AUTH, JSON, *headers], body))


@pytest.mark.parametrize(
    "tag",
    ['"\u00b9"', '"\u0661"', '"01"', '"1.0"', '"+1"', 'W/"1"', '"１"'],
    ids=["superscript-one", "arabic-one", "leading-zero", "decimal", "plus", "weak", "fullwidth"],
)
def test_if_match_is_an_opaque_strong_comparison(server, db, tag):
    product_id, version = _product(server, db)
    assert version == 1
    raw = tag.encode("utf-8")
    answer = send(
        server,
        request_bytes(
            "PATCH", f"/api/products/{product_id}", [AUTH, JSON, b"If-Match: " + raw], b'{"price_cents": 777}'
        ),
    )
    assert answer.status == 412, (tag, answer.status, answer.body[:200])
    assert _price(db, product_id) == 100
    answer = send(server, request_bytes("GET", f"/api/products/{product_id}", [b"If-Match: " + raw]))
    assert answer.status == 412, (tag, answer.status)
    # The observer: the canonical tag matches.
    assert _patch(server, product_id, 'If-Match: "1"').status == 200


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_if_none_match_on_a_change_that_matches_is_412_and_nothing_is_written(server, db, method):
    email = f"n{uuid.uuid4().hex[:10]}@example.com"
    created = send(
        server,
        request_bytes("POST", "/api/customers", [AUTH, JSON], json.dumps({"name": "Inm", "email": email}).encode()),
    )
    customer_id = json.loads(created.body)["id"]
    path = f"/api/customers/{customer_id}"
    for condition in ("*", '"1"', 'W/"1"', '"9", "1"'):
        body = b'{"name": "Changed"}' if method == "PATCH" else b""
        answer = send(
            server, request_bytes(method, path, [AUTH, *([JSON] if body else []), f"If-None-Match: {condition}"], body)
        )
        assert answer.status == 412, (condition, answer.status)
        assert answer.problem()["field"] == "If-None-Match"
        assert query(db, "SELECT name, version FROM customers WHERE id = %s", (customer_id,)) == [("Inm", 1)]
    # A tag that is not the current version lets the change happen.
    body = b'{"name": "Changed"}' if method == "PATCH" else b""
    answer = send(server, request_bytes(method, path, [AUTH, *([JSON] if body else []), 'If-None-Match: "2"'], body))
    assert answer.status == (200 if method == "PATCH" else 204)


def test_if_none_match_star_on_a_missing_resource_is_404_not_412(server):
    answer = _patch(server, 2_000_000_000, "If-None-Match: *")
    assert answer.status == 404


@pytest.mark.parametrize("path", ["/api/products/{id}", "/api/products?limit=3"])
def test_head_answers_exactly_as_get(server, db, path):
    product_id, _ = _product(server, db)
    path = path.format(id=product_id)
    get = send(server, request_bytes("GET", path))
    tag = get.header("etag")
    for condition in (f"If-None-Match: {tag}", "If-None-Match: *", 'If-Match: "999"', f"If-Match: {tag}", None):
        headers = [condition] if condition else []
        as_get = send(server, request_bytes("GET", path, headers))
        as_head = send(server, request_bytes("HEAD", path, headers))
        assert as_head.status == as_get.status, (condition, as_head.status, as_get.status)
        assert as_head.header("etag") == as_get.header("etag")
        assert as_head.body == b""


def test_the_precedence_of_rfc_9110_13_2_2(server, db):
    product_id, _ = _product(server, db)
    path = f"/api/products/{product_id}"
    # 1. If-Match false wins over a matching If-None-Match: 412, not 304.
    assert send(server, request_bytes("GET", path, ['If-Match: "9"', 'If-None-Match: "1"'])).status == 412
    # 1 true, 3 false on GET: 304.
    assert send(server, request_bytes("GET", path, ['If-Match: "1"', 'If-None-Match: "1"'])).status == 304
    # 2, 4, 5: no modification dates, no ranges here: ignored (even when If-Match is absent).
    for header in (
        "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
        "If-Modified-Since: Sat, 01 Jan 2100 00:00:00 GMT",
        'If-Range: "1"',
        "Range: bytes=0-1",
    ):
        assert send(server, request_bytes("GET", path, [header])).status == 200, header
    # A page's weak ETag never matches If-Match (strong comparison); `*` does.
    page = f"/api/products?after={product_id - 1}&limit=1"
    tag = send(server, request_bytes("GET", page)).header("etag")
    assert tag.startswith('W/"')
    assert send(server, request_bytes("GET", page, [f"If-Match: {tag}"])).status == 412
    assert send(server, request_bytes("GET", page, ["If-Match: *"])).status == 200


def test_conditions_on_creates_are_evaluated_against_the_collection(server, db):
    customer, body = new_customer()
    # /api/customers exists: If-None-Match * is false (412), If-Match with a tag is false (its ETag is weak).
    for header in ("If-None-Match: *", 'If-Match: "1"'):
        answer = send(server, request_bytes("POST", "/api/customers", [AUTH, JSON, header], body))
        assert answer.status == 412, header
    assert query(db, "SELECT count(*) FROM customers WHERE email = %s", (customer["email"],))[0][0] == 0
    assert send(server, request_bytes("POST", "/api/customers", [AUTH, JSON, "If-Match: *"], body)).status == 201
    # /api/orders has no GET: no current representation. If-Match is false, If-None-Match * true.
    order = json.dumps({"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}).encode()
    assert send(server, request_bytes("POST", "/api/orders", [AUTH, JSON, "If-Match: *"], order)).status == 412
    assert send(server, request_bytes("POST", "/api/orders", [AUTH, JSON, "If-None-Match: *"], order)).status in (
        201,
        409,
    )


def test_the_dashboard_evaluates_conditions_against_its_weak_etag(server):
    """A report's ETag is weak (it names a snapshot, `as_of`): If-Match never matches it (a strong
    comparison), If-None-Match `*` and the report's own tag do."""
    assert send(server, request_bytes("GET", "/api/dashboard", [AUTH, "If-None-Match: *"])).status == 304
    assert send(server, request_bytes("GET", "/api/dashboard", [AUTH, 'If-None-Match: "1"'])).status == 200
    assert send(server, request_bytes("GET", "/api/dashboard", [AUTH, 'If-Match: "1"'])).status == 412
    assert send(server, request_bytes("GET", "/api/dashboard", [AUTH, "If-Match: *"])).status == 200


@pytest.mark.parametrize("value", [b'"a"b', b'" 1"', b"1", b'"a", b', b"W/1", b"**", b'"a",,"b"'])
def test_a_condition_outside_the_grammar_is_400_naming_it(server, value):
    for name in (b"If-Match", b"If-None-Match"):
        answer = send(server, request_bytes("GET", "/api/products/1", [name + b": " + value]))
        assert answer.status == 400, (name, value, answer.status)
        assert answer.problem()["field"] == name.decode()


# -- one identity per text ---------------------------------------------------------------------------------------------
def _post_product(server, sku: str, name: str = "Lookalike") -> Answer:
    body = json.dumps({"sku": sku, "name": name, "price_cents": 1, "stock": 1}, ensure_ascii=False).encode()
    return send(server, request_bytes("POST", "/api/products", [AUTH, JSON], body))


LOOKALIKES = {
    "trailing-space": "{} ",
    "leading-space": " {}",
    "no-break-space": "{}\u00a0",
    "zero-width-space": "{}\u200b",
    "bom-prefix": "\ufeff{}",
    "rlo-prefix": "\u202e{}",
    "word-joiner": "{}\u2060",
    "tag-characters": "{}\U000e0041",
    "soft-hyphen": "{}\u00ad",
    # Default-ignorable code points (UAX #44) and look-alikes from another script or a compatibility
    # form: a SKU is printable ASCII (UTS #39's ASCII-only restriction level).
    "hangul-filler": "{}\u3164",
    "grapheme-joiner": "{}\u034f",
    "variation-selector": "{}\U000e0100",
    "cyrillic-letter": "\u0405{}",  # Ѕ, which reads as S
    "ligature": "{}\ufb01",  # ﬁ, which reads as fi
    "fullwidth": "\uff33{}",  # Ｓ
}


@pytest.mark.parametrize("shape", sorted(LOOKALIKES))
def test_a_sku_that_looks_like_another_is_refused_naming_the_field(server, db, shape):
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    assert _post_product(server, sku).status == 201  # the observer: the plain SKU is created
    answer = _post_product(server, LOOKALIKES[shape].format(sku))
    assert answer.status == 400, (shape, answer.status)
    assert answer.problem()["field"] == "sku"
    # Refused by the API's own rule (the spec's pattern or the text rule), before the database's.
    assert answer.problem()["detail"].startswith(("'sku': ", "'sku' may not")), answer.problem()
    assert query(db, "SELECT count(*) FROM products WHERE sku LIKE %s", (f"%{sku[4:]}%",))[0][0] == 1


def test_a_sku_is_ascii_and_a_name_in_another_normal_form_is_the_same_name(server, db):
    answer = _post_product(server, f"SKÜ-{uuid.uuid4().hex[:8]}")
    assert answer.status == 400 and answer.problem()["field"] == "sku", answer.status
    name = unicodedata.normalize("NFD", "Zoë Ångström")
    created = _post_product(server, f"SKU-{uuid.uuid4().hex[:8]}", name)
    assert created.status == 201 and json.loads(created.body)["name"] == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize(
    "name",
    [
        "\u200b",
        "\u200b\u200b",
        "Ada\u202eecalevoL",
        "Ada\u2028Lovelace",
        "Ada\u2029",
        "Ada\U000e0020\U000e007f",
        "Ada\u0085",
    ],
    ids=["zwsp-only", "zwsp-twice", "rlo", "line-separator", "paragraph-separator", "tags", "nel"],
)
def test_a_customer_name_with_invisible_or_breaking_characters_is_refused(server, db, name):
    email = f"c{uuid.uuid4().hex[:10]}@example.com"
    body = json.dumps({"name": name, "email": email}).encode()
    answer = send(server, request_bytes("POST", "/api/customers", [AUTH, JSON], body))
    assert answer.status == 400, (name, answer.status)
    assert answer.problem()["field"] == "name"
    assert query(db, "SELECT count(*) FROM customers WHERE email = %s", (email,))[0][0] == 0


def test_search_finds_the_nfc_and_the_nfd_form_of_a_name(server):
    name = f"Zoë Ångström {uuid.uuid4().hex[:6]}"
    body = json.dumps(
        {"name": unicodedata.normalize("NFD", name), "email": f"z{uuid.uuid4().hex[:10]}@example.com"}
    ).encode()
    created = send(server, request_bytes("POST", "/api/customers", [AUTH, JSON], body))
    assert created.status == 201 and json.loads(created.body)["name"] == unicodedata.normalize("NFC", name)
    for form in ("NFC", "NFD"):
        q = unicodedata.normalize(form, name.split()[1]).encode("utf-8")
        target = "/api/customers?q=" + "".join(f"%{b:02X}" for b in q)
        found = send(server, request_bytes("GET", target, [AUTH]))
        assert found.status == 200
        assert [c["id"] for c in json.loads(found.body)["items"]] == [json.loads(created.body)["id"]], form


def test_a_json_log_line_is_one_line_whatever_its_fields_hold():
    """orjson leaves U+0085, U+2028 and U+2029 raw in a string, and str.splitlines() breaks on them."""
    import logging

    from swagger_server.observability.logs import JsonFormatter

    record = logging.LogRecord("store_api.access", logging.INFO, __file__, 0, "request", None, None)
    record.fields = {"path": "/a\x85b\u2028c\u2029d", "status": 200}
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert json.loads(line)["path"] == "/a\x85b\u2028c\u2029d"  # escaped, not lost


def test_body_patterns_are_ecma_262_even_where_the_text_rule_would_also_refuse():
    """The text rule now refuses a trailing newline in every body string, so over HTTP the ECMA-262
    pattern (whose `$` is the end, where Python's also matches before a final newline) is a second
    defence; it is checked here on the body validator itself."""
    from swagger_server.validation import EcmaRequestValidator

    validator = EcmaRequestValidator(
        {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}}}
    )
    assert list(validator.iter_errors({"sku": "ABC"})) == []
    assert list(validator.iter_errors({"sku": "ABC\n"}))


def test_the_servers_signals_agree_with_what_its_clients_received(server):
    """Last in this module: what /metrics counted is what the clients above received."""
    TALLY.check(server)
