"""Randomised HTTP on raw sockets: valid requests with their headers and framing permuted (case,
repetition, `_` spellings, whitespace, chunked and length framing, chunk extensions, trailer fields,
split writes, pipelining, early closes, bytes that are not UTF-8), and the edges beside the schema
(issue 30): protocol upgrades, a hostile Host on the redirecting paths, conditional headers of every
shape, text with invisible, breaking and decomposed characters, hostile trace headers; against real
gunicorn.

Whatever is sent, the service answers each request at most once, with a status below 500 and a
problem+json for every 4xx, never a Location built from Host; it stores nothing the schema or the
text rule forbids; its log holds no traceback and no line a client could break or stretch.

`make test` runs a short fixed-seed round (HTTP_FUZZ_SECONDS=6, seed 19); `make fuzz-http` runs
HTTP_FUZZ_SECONDS (300) with a random seed, printed so that a failure can be repeated with
HTTP_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback

from swagger_server import text
from tests.support.auth import TOKEN
from tests.support.database import query
from tests.support.rawhttp import Connection
from tests.support.servers import live_server

SECONDS = float(os.environ.get("HTTP_FUZZ_SECONDS", "6"))
SEED = os.environ.get("HTTP_FUZZ_SEED", "19")

BASES = [
    ("POST", "/api/customers", b'{"name":"Fuzz","email":"fuzz@example.com"}'),
    ("POST", "/api/customers", b'{"name":5,"email":"not-an-email"}'),
    ("POST", "/api/products", b'{"sku":"F-1","name":"F","price_cents":1000000000000,"stock":1}'),
    # Wide arrays (100 lines are allowed): over maxItems within the length bound (400 by its size),
    # and past the length bound (413, unparsed).
    (
        "POST",
        "/api/orders",
        b'{"customer_id":1,"lines":[' + b",".join([b'{"product_id":1,"quantity":1}'] * 150) + b"]}",
    ),
    ("POST", "/api/orders", b'{"customer_id":1,"lines":[' + b",".join([b"{}"] * 30_000) + b"]}"),
    ("POST", "/api/orders", b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'),
    ("PATCH", "/api/products/2", b'{"price_cents":100000000000}'),
    ("GET", "/api/customers?limit=2", b""),
    ("GET", "/api/products/1", b""),
    ("GET", "/api/health/ready", b""),
]
HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Host", "X-Consistency-Token"]
# Invisible, breaking, decomposing, default-ignorable, unassigned or look-alike pieces of text (text.py
# refuses or normalises each; a SKU is printable ASCII).
HOSTILE_TEXT = [
    "\u3164",
    "\u1160",
    "\u034f",
    "\ufe0f",
    "\U000e0100",
    "\u17b4",
    "\u180b",
    "\ufdd0",
    "\U000e0fff",
    "\u0420",  # Cyrillic Р, which reads as P
    "\ufb01",  # the ligature ﬁ
    "\u200b",
    "\u202e",
    "\ufeff",
    "\u2028",
    "\u2029",
    "\x85",
    " ",
    "\xa0",
    "\U000e0041",
    "e\u0301",
    "\xad",
    "\u3000",
]
CONDITIONS = ['"1"', '"01"', '"\xb9"', "*", 'W/"1"', '"1", W/"2"', '"a"b', '"2"', '""', " * "]
REDIRECTING = ["/", "/api", "/api/ui", "/api/", "/api/customers/"]
TRACE_JUNK = ["k\x85v=" + "x" * 3000, "a=b,c", "\xff" * 40, "=" * 200]


def _case(rng: random.Random, name: str) -> str:
    return rng.choice([name, name.lower(), name.upper(), "".join(rng.choice((c.lower(), c.upper())) for c in name)])


def _chunked(rng: random.Random, body: bytes) -> bytes:
    out, i = b"", 0
    while i < len(body):
        n = rng.randint(1, max(1, len(body) - i))
        size = rng.choice([b"%x" % n, b"%X" % n, b"0%x" % n, b"%x;ext=1" % n])
        out += size + b"\r\n" + body[i : i + n] + b"\r\n"
        i += n
    trailers = b""
    if rng.random() < 0.3:  # trailer fields: dropped, never read as headers
        trailers = b"".join(
            rng.choice(
                [
                    f"Authorization: Bearer {TOKEN}".encode(),
                    b"X-Request-ID: from-trailer",
                    b"Content-Type: text/plain",
                    b"X-T: 1",
                ]
            )
            + b"\r\n"
            for _ in range(rng.randint(1, 3))
        )
    return out + b"0\r\n" + trailers + b"\r\n"


def _hostile_text(rng: random.Random, base: str) -> str:
    piece = rng.choice(HOSTILE_TEXT)
    return rng.choice([piece + base, base + piece, base[:2] + piece + base[2:], piece])


def _text_body(rng: random.Random) -> tuple[str, str, bytes]:
    import json

    if rng.random() < 0.5:
        fields = {"name": _hostile_text(rng, "Fuzz Ünï"), "email": f"fz{rng.randint(0, 999)}@example.com"}
        path = "/api/customers"
    else:
        sku = _hostile_text(rng, f"FZ-{rng.randint(0, 99)}")
        fields = {"sku": sku, "name": _hostile_text(rng, "Fuzz"), "price_cents": 1, "stock": 1}
        path = "/api/products"
    return "POST", path, json.dumps(fields, ensure_ascii=rng.random() < 0.5).encode()


def make_request(rng: random.Random) -> tuple[bytes, bool]:
    """(bytes, complete): a request with its head and framing permuted; `complete` is False when it
    was cut short on purpose (the client then closes)."""
    method, path, body = rng.choice(BASES) if rng.random() < 0.8 else _text_body(rng)
    host = "t"
    if rng.random() < 0.08:  # a redirecting path with a hostile Host, any method
        method, path, host = (
            rng.choice(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
            rng.choice(REDIRECTING),
            "evil.example:666",
        )
        body = b"{}" if method in ("POST", "PUT") else b""
    headers = [
        (_case(rng, "Host"), host),
        (_case(rng, "Authorization"), f"Bearer {TOKEN}"),
    ]
    if rng.random() < 0.2:
        headers.append((rng.choice(["If-Match", "If-None-Match"]), rng.choice(CONDITIONS)))
    if rng.random() < 0.04:
        headers += [
            ("Connection", rng.choice(["Upgrade", "keep-alive, upgrade"])),
            ("Upgrade", rng.choice(["websocket", "h2c"])),
        ]
    if rng.random() < 0.05:
        headers += [
            ("traceparent", f"00-{rng.randbytes(16).hex()}-{rng.randbytes(8).hex()}-01"),
            (rng.choice(["tracestate", "baggage"]), rng.choice(TRACE_JUNK)),
        ]
    if body:
        headers.append(
            (_case(rng, "Content-Type"), rng.choice(["application/json", "Application/JSON; charset=utf-8"]))
        )
    if method == "POST" and rng.random() < 0.3:
        headers.append((_case(rng, "Idempotency-Key"), f"fz-{rng.randint(0, 20)}"))
    for _ in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.25 and headers:
            name, value = rng.choice(headers)
            headers.append((_case(rng, name), rng.choice([value, "other", "application/json", "text/plain"])))
        elif kind < 0.45:
            name = rng.choice(HEADERS)
            headers.append((name.replace("-", "_"), "x"))
        elif kind < 0.6:
            headers.append((rng.choice(HEADERS), rng.choice(["", " ", "\xff\xfe", "a" * 300, "0/1", "\t v \t"])))
        elif kind < 0.75 and headers:
            i = rng.randrange(len(headers))
            del headers[i]
        else:
            headers.append((f"X-Junk-{rng.randint(0, 9)}", "".join(chr(rng.randint(32, 255)) for _ in range(8))))
    framing = rng.random()
    payload = body
    if body or framing < 0.1:
        if framing < 0.6:
            headers.append(("Content-Length", str(len(body))))
        elif framing < 0.8:
            headers.append(("Transfer-Encoding", "chunked"))
            payload = _chunked(rng, body)
        elif framing < 0.9:
            headers.append(("Content-Length", str(len(body) + rng.choice([-3, -1, 1, 5]))))
        else:
            headers += [("Transfer-Encoding", "chunked"), ("Content-Length", str(len(body)))]
            payload = _chunked(rng, body)
    rng.shuffle(headers[1:])
    head = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
        name.encode("latin-1") + b":" + rng.choice([b" ", b"", b"  "]) + value.encode("latin-1") + b"\r\n"
        for name, value in headers
    )
    data = head + b"\r\n" + payload
    if rng.random() < 0.05:
        return data[: rng.randint(1, len(data) - 1)], False
    return data, True


server = live_server("server", API_HEAD_TIMEOUT="1", API_BODY_TIMEOUT="1", WEB_THREADS=4)


def test_permuted_requests_never_get_a_5xx_nor_store_what_the_schema_forbids(server, store):
    seed = random.randrange(1 << 30) if SEED == "random" else int(SEED)
    print(f"HTTP fuzz: seed {seed}, {SECONDS:g} s (repeat with HTTP_FUZZ_SEED={seed})")
    failures: list[str] = []
    sent = [0]
    deadline = time.monotonic() + SECONDS

    def client(index: int):
        try:
            run(index)
        except Exception as exc:  # a crashed client fails the test, not a warning
            failures.append(f"seed {seed}: client {index} crashed: {exc!r} {traceback.format_exc()[-600:]}")

    def run(index: int):
        rng = random.Random(seed * 16 + index)
        while time.monotonic() < deadline and not failures:
            batch = [make_request(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            complete = all(done for _, done in batch)
            data = b"".join(raw for raw, _ in batch)
            try:
                conn = Connection(server.port, timeout=10)
            except OSError as exc:
                failures.append(f"connect: {exc}")
                return
            if rng.random() < 0.03:  # a silent connection: 408 at the head timeout (1 s here), then closed
                try:
                    answer = conn.read_answer()
                    if answer is None or answer.status != 408 or answer.header("connection") != "close":
                        failures.append(f"seed {seed}: a silent connection got {answer and answer.status}")
                except TimeoutError:
                    failures.append(f"seed {seed}: a silent connection was kept 10 s")
                finally:
                    conn.close()
                continue
            try:
                cut = rng.randint(1, len(data)) if rng.random() < 0.3 else len(data)
                conn.send(data[:cut])
                if cut < len(data):
                    time.sleep(rng.random() * 0.02)  # pacing: the rest of the request in a later read
                    conn.send(data[cut:])
                sent[0] += len(batch)
                if not complete:
                    continue  # cut short on purpose: close without reading
                for raw, _ in batch:
                    answer = conn.read_answer(head_only=raw.startswith(b"HEAD "))
                    if answer is None:
                        break  # refused and closed: later requests on it are not read
                    if answer.status >= 500 or (
                        answer.status >= 400 and answer.header("content-type") != "application/problem+json"
                    ):
                        failures.append(f"seed {seed}: {answer.status} {answer.body[:200]!r} for {data[:400]!r}")
                        return
                    location = answer.header("location")
                    if location is not None and (not location.startswith("/") or location.startswith("//")):
                        failures.append(f"seed {seed}: Location {location!r} for {data[:400]!r}")
                        return
                    if answer.header("connection") == "close":
                        break
            except TimeoutError:
                failures.append(f"seed {seed}: no answer within 10 s to {data[:400]!r}")
            except (ConnectionError, AssertionError) as exc:
                if "inside an answer" in str(exc):
                    failures.append(f"seed {seed}: {exc} for {data[:400]!r}")
            finally:
                conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 60)
    assert not failures, failures[0]
    print(f"HTTP fuzz: {sent[0]} requests sent")
    assert sent[0] > 50, "the fuzzer ran"
    assert query(store, "SELECT count(*) FROM customers WHERE name ~ '^[0-9]+$' OR position('@' in email) = 0") == [
        (0,)
    ]
    assert query(store, "SELECT count(*) FROM products WHERE price_cents > 100000000") == [(0,)]
    stored = [
        v
        for row in query(store, "SELECT name, email FROM customers UNION ALL SELECT sku, name FROM products")
        for v in row
    ]
    refused = [v for v in stored if text.canonical(v) != v or text.refusal(v) is not None]
    assert refused == [], refused[:5]
    skus = [sku for (sku,) in query(store, "SELECT sku FROM products")]
    assert skus and all(sku.isascii() for sku in skus), [s for s in skus if not s.isascii()][:5]
    time.sleep(0.2)  # settle: the log writers flush every 20 ms
    output = server.output()
    assert "Traceback" not in output, _traceback(output)
    assert '"status":500' not in server.output()
    lines = output.splitlines()  # also breaks on U+0085, U+2028, U+2029: a forged line would show
    assert max(len(line) for line in lines) <= 2000, max(lines, key=len)[:300]
    health = Connection(server.port)
    health.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert health.read_answer().status == 200  # still serving
    health.close()


def _traceback(output: str) -> str:
    """The first traceback in the log: the line before it and its last lines (where the error is)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("{", "["))), len(lines)) - 1
    return "\n".join([lines[start - 1], *(text for text in lines[start : end + 1] if text.strip(" ^"))])
