"""Randomised HTTP on raw sockets: valid requests with their headers and framing permuted (case,
repetition, `_` spellings, whitespace, chunked and length framing, chunk extensions, split writes,
pipelining, early closes, bytes that are not UTF-8), against real gunicorn.

Whatever is sent, the service answers each request at most once, with a status below 500 and a
problem+json for every 4xx; it stores nothing the schema forbids; its log holds no traceback.

`make test` runs a short fixed-seed round (HTTP_FUZZ_SECONDS=6, seed 19); `make fuzz-http` runs
HTTP_FUZZ_SECONDS (300) with a random seed, printed so that a failure can be repeated with
HTTP_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from tests.conftest import TOKEN, query
from tests.rawhttp import Connection
from tests.servers import Gunicorn

SECONDS = float(os.environ.get("HTTP_FUZZ_SECONDS", "6"))
SEED = os.environ.get("HTTP_FUZZ_SEED", "19")

BASES = [
    ("POST", "/api/customers", b'{"name":"Fuzz","email":"fuzz@example.com"}'),
    ("POST", "/api/customers", b'{"name":5,"email":"not-an-email"}'),
    ("POST", "/api/products", b'{"sku":"F-1","name":"F","price_cents":1000000000000,"stock":1}'),
    ("POST", "/api/orders", b'{"customer_id":1,"lines":[{"product_id":1,"quantity":1}]}'),
    ("PATCH", "/api/products/2", b'{"price_cents":100000000000}'),
    ("GET", "/api/customers?limit=2", b""),
    ("GET", "/api/products/1", b""),
    ("GET", "/api/health/ready", b""),
]
HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Host", "X-Consistency-Token"]


def _case(rng: random.Random, name: str) -> str:
    return rng.choice([name, name.lower(), name.upper(), "".join(rng.choice((c.lower(), c.upper())) for c in name)])


def _chunked(rng: random.Random, body: bytes) -> bytes:
    out, i = b"", 0
    while i < len(body):
        n = rng.randint(1, max(1, len(body) - i))
        size = rng.choice([b"%x" % n, b"%X" % n, b"0%x" % n, b"%x;ext=1" % n])
        out += size + b"\r\n" + body[i : i + n] + b"\r\n"
        i += n
    return out + b"0\r\n\r\n"


def make_request(rng: random.Random) -> tuple[bytes, bool]:
    """(bytes, complete): a request with its head and framing permuted; `complete` is False when it
    was cut short on purpose (the client then closes)."""
    method, path, body = rng.choice(BASES)
    headers = [
        (_case(rng, "Host"), "t"),
        (_case(rng, "Authorization"), f"Bearer {TOKEN}"),
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


@pytest.fixture(scope="module")
def server(database_url):
    live = Gunicorn(database_url, API_HEAD_TIMEOUT="1", API_BODY_TIMEOUT="1", WEB_THREADS=4)
    yield live
    live.stop()


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
            failures.append(f"seed {seed}: client {index} crashed: {exc!r}")

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
            try:
                cut = rng.randint(1, len(data)) if rng.random() < 0.3 else len(data)
                conn.send(data[:cut])
                if cut < len(data):
                    time.sleep(rng.random() * 0.02)
                    conn.send(data[cut:])
                sent[0] += len(batch)
                if not complete:
                    continue  # cut short on purpose: close without reading
                for _ in batch:
                    answer = conn.read_answer()
                    if answer is None:
                        break  # refused and closed: later requests on it are not read
                    if answer.status >= 500 or (
                        answer.status >= 400 and answer.header("content-type") != "application/problem+json"
                    ):
                        failures.append(f"seed {seed}: {answer.status} {answer.body[:200]!r} for {data[:400]!r}")
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
    assert sent[0] > 50, "the fuzzer ran"
    assert query(store, "SELECT count(*) FROM customers WHERE name ~ '^[0-9]+$' OR position('@' in email) = 0") == [
        (0,)
    ]
    assert query(store, "SELECT count(*) FROM products WHERE price_cents > 100000000") == [(0,)]
    time.sleep(0.2)
    output = server.output()
    assert "Traceback" not in output, _traceback(output)
    assert '"status":500' not in server.output()
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
