"""Per-caller rate limits (swagger_server/pipeline/ratelimit.py) in one process with memory storage: the IETF
draft's fields on every answer, 429 rate-limited past the quota with Retry-After, a quota per caller,
probes untouched, the dashboard's cost by its range. Redis, a fleet and a storage that fails:
tests/pipeline/test_ratelimit_redis.py."""

from __future__ import annotations

import math
import re

import pytest

from swagger_server import create_app, get_database
from swagger_server.config import ConfigError, load_settings
from swagger_server.state import of_flask
from tests.support.auth import AUTH
from tests.support.database import make_settings, seed_demo

FIELD = re.compile(r'^"default";r=(\d+);t=(\d+)$')


@pytest.fixture
def limited(database_url):
    app = create_app(
        # A day's window: the memory storage's sliding-window counter weighs the previous window's count,
        # so a test that crossed a window's edge would see its counts move (a minute's edge: 1 run in 60).
        make_settings(database_url, api={"rate_limit": "200/day", "tokens": ("test-token", "read:other-token")})
    )
    yield app
    get_database(app).close(timeout=2)


def remaining(response) -> int:
    match = FIELD.match(response.headers["RateLimit"])
    assert match, response.headers["RateLimit"]
    assert 0 <= int(match.group(2)) <= 86400
    return int(match.group(1))


def test_each_answer_says_the_policy_and_what_is_left_and_past_it_429(limited, store):
    with limited.test_client(headers=AUTH) as client:  # one event loop, as a worker has
        check_quota(client)


def check_quota(client):
    first = client.get("/api/customers/1")
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == '"default";q=200;w=86400'
    left = remaining(first)
    assert left == 199
    assert remaining(client.get("/api/customers/404")) == 198  # errors count and carry them too
    # The ten-year dashboard costs a unit per 31 days: 118.
    report = client.get("/api/dashboard?from=2016-12-04&to=2026-12-03")
    assert report.status_code == 200 and remaining(report) == 198 - 118
    for _ in range(80):
        client.get("/api/customers/2")
    refused = client.get("/api/customers/1")
    assert refused.status_code == 429, refused.text
    assert refused.json()["type"] == "/api/problems/rate-limited" and "200 per 86400 s" in refused.json()["detail"]
    assert remaining(refused) == 0
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert refused.headers["RateLimit-Policy"] == '"default";q=200;w=86400'
    # Another caller has its own quota; the probes pass, uncounted and unmarked.
    other = client.get("/api/customers/1", headers={"Authorization": "Bearer other-token"})
    assert other.status_code == 200 and remaining(other) == 199
    for path in ("/api/health", "/api/health/ready"):
        probe = client.get(path)
        assert probe.status_code == 200 and "ratelimit" not in {k.lower() for k in probe.headers}
    # Public operations check no token: their callers are counted by address.
    anonymous = client.get("/api/products/1", headers={"Authorization": ""})
    assert anonymous.status_code == 200 and remaining(anonymous) == 199


def test_without_a_limit_no_fields_are_sent(client, store):
    response = client.get("/api/customers/1")
    assert response.status_code == 200 and "ratelimit" not in {k.lower() for k in response.headers}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_RATE_LIMIT": "lots"}, "API_RATE_LIMIT / [API] rate_limit: expected a rate like 600/minute, got 'lots'"),
        (
            {"API_RATE_LIMIT": "10/second", "API_RATE_LIMIT_STORAGE": "memcached://x:1"},
            "API_RATE_LIMIT_STORAGE / [API] rate_limit_storage: expected memory:// or redis://host:port/db",
        ),
    ],
)
def test_a_bad_limit_or_storage_stops_start_up_naming_it(env, message):
    with pytest.raises(ConfigError) as caught:
        load_settings({"APP_CONFIG": "tests/empty.ini", **env})
    assert message in str(caught.value)


def test_the_dashboard_has_a_statement_timeout_of_its_own(new_database):
    """A ten-year report over 30 000 orders takes tens of ms: under a 1 ms dashboard timeout it is a
    503 statement-timeout (no Retry-After: it would time out again; counted by operation), while the
    same app's other reads (the connection's 3 s timeout) answer."""
    from swagger_server.db.migrate import upgrade

    url = new_database("store_dashboard_timeout")
    upgrade(url)
    seed_demo(url, 3000)
    for timeout_ms, expected in ((1, 503), (3000, 200)):
        app = create_app(make_settings(url, api={"dashboard_timeout_ms": timeout_ms}))
        try:
            with app.test_client(headers=AUTH) as client:
                report = client.get("/api/dashboard?from=2016-12-04&to=2026-12-03")
                assert report.status_code == expected, report.text
                timeouts = of_flask(app.app).metrics.registry.get_sample_value(
                    "store_api_statement_timeouts_total", {"operation": "get_dashboard"}
                )
                if expected == 503:
                    assert report.json()["type"] == "/api/problems/statement-timeout"
                    # It would time out again: no Retry-After promises otherwise, and it is counted apart.
                    assert "Retry-After" not in report.headers
                    assert "shorter range" in report.json()["detail"]
                    assert timeouts == 1
                else:
                    assert not timeouts
                assert client.get("/api/customers/1").status_code == 200
        finally:
            get_database(app).close(timeout=2)


def test_a_request_refused_as_invalid_counts_against_its_caller(limited, store, monkeypatch):
    """The limit runs before validation: a body the schema refuses (400) and one too long to parse
    (413) each cost the caller a unit, and a caller past its quota is answered 429 before its body is
    validated at all."""
    from swagger_server import validation

    with limited.test_client(headers=AUTH) as client:
        first = client.post("/api/customers", json={"name": "x" * 1000, "email": "a@example.com"})
        assert first.status_code == 400 and remaining(first) == 199, first.text
        long = client.post("/api/customers", content=" " * 100_000, headers={"Content-Type": "application/json"})
        assert long.status_code == 413 and remaining(long) == 198, long.text
        for _ in range(198):
            client.post("/api/orders", json={"customer_id": 1, "lines": []})
        validated = []
        monkeypatch.setattr(validation.ProblemJSONBodyValidator, "_read", lambda self, raw: validated.append(raw))
        refused = client.post("/api/customers", json={"name": "n", "email": "a@example.com"})
        assert refused.status_code == 429 and remaining(refused) == 0, refused.text
        assert validated == []  # never read: refused by the limit first
        monkeypatch.undo()
        assert client.post("/api/customers", json={"name": "n", "email": "a@example.com"}).status_code == 429


def test_a_body_is_read_off_the_event_loop(limited, store, monkeypatch):
    """Parsing and validating a body (up to 6 ms of jsonschema for 100 lines) runs in a thread, not on
    the event loop that serves every other connection of the worker."""
    import asyncio
    import threading

    from swagger_server import validation

    seen = {}
    original = validation.ProblemJSONBodyValidator._read
    original_parse = validation.ProblemJSONBodyValidator._parse

    async def parse(self, stream, scope):
        seen["loop"] = threading.get_ident()
        asyncio.get_running_loop()  # the observer: this part is on the loop
        return await original_parse(self, stream, scope)

    def read(self, raw):
        seen["read"] = threading.get_ident()
        return original(self, raw)

    monkeypatch.setattr(validation.ProblemJSONBodyValidator, "_parse", parse)
    monkeypatch.setattr(validation.ProblemJSONBodyValidator, "_read", read)
    with limited.test_client(headers=AUTH) as client:
        answer = client.post("/api/orders", json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]})
    assert answer.status_code == 201, answer.text
    assert "loop" in seen and "read" in seen and seen["read"] != seen["loop"], seen


def test_the_memory_window_counts_as_the_limits_library_does(monkeypatch):
    """MemoryWindows is the `limits` library's sliding-window counter without its storage's expiry
    thread: on the same clock, 3 000 random hits of 5 callers (costs 1-7, time moving by up to a
    window) get the same verdict, the same remaining count and the same reset from both."""
    import random
    import time as time_module

    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import SlidingWindowCounterRateLimiter

    from swagger_server.pipeline.ratelimit import MemoryWindows

    clock = [1_000_000.0]
    monkeypatch.setattr(time_module, "time", lambda: clock[0])
    item = parse("10/minute")
    library = SlidingWindowCounterRateLimiter(MemoryStorage())
    ours = MemoryWindows(item.amount, item.get_expiry())
    rng = random.Random(42)
    allowed = refused = 0
    for _ in range(3_000):
        clock[0] += rng.choice([0.0, 0.0, 0.0, 0.3, 0.3, 1.7, 13.1, 59.9, 61.0, 150.0][: rng.choice([5, 10])])
        caller, cost = f"c{rng.randrange(5)}", rng.choice([1, 1, 1, 2, 7])
        theirs_allowed = library.hit(item, caller, cost=cost)
        stats = library.get_window_stats(item, caller)
        theirs = (theirs_allowed, stats.remaining, max(0, math.ceil(stats.reset_time - clock[0])))
        mine = ours.hit(caller, cost, now=clock[0])
        assert mine == theirs, (caller, cost, clock[0], mine, theirs)
        allowed, refused = allowed + theirs_allowed, refused + (not theirs_allowed)
    assert allowed > 300 and refused > 100  # the observer: both verdicts were compared


def test_the_cost_of_an_operation_is_declared_in_the_spec():
    """The dashboard's cost is its spec's x-rate-cost (the pipeline imported a controller for it); a
    malformed one stops the start naming the operation."""
    from swagger_server.app import load_spec
    from swagger_server.pipeline.ratelimit import RateLimitConfigError, costs_from_spec

    costs = costs_from_spec(load_spec()["paths"])
    assert set(costs) == {"get_dashboard"}
    cost = costs["get_dashboard"]
    assert cost({"query_string": b""}) == 1  # the default 30 days
    assert cost({"query_string": b"from=2016-01-01&to=2025-12-31"}) == 118
    assert cost({"query_string": b"from=2026-01-01&to=2026-01-31"}) == 1
    assert cost({"query_string": b"from=2026-01-01&to=2026-02-01"}) == 2
    assert cost({"query_string": b"from=yesterday"}) == 1  # refused by the handler: costs 1
    assert cost({"query_string": b"from=0001-01-01&to=9999-12-31"}) == 119
    fixed = {"/x": {"get": {"operationId": "get_x", "x-rate-cost": 3}}}
    assert costs_from_spec(fixed)["get_x"]({}) == 3
    broken = {"/x": {"get": {"operationId": "get_x", "x-rate-cost": {"days-per-unit": 31}}}}
    with pytest.raises(RateLimitConfigError, match="x-rate-cost of get_x"):
        costs_from_spec(broken)
