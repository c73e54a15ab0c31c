"""The dashboard's reports, kept for `[API] dashboard_max_age` (swagger_server/reports.py): each answer
says how old it is (`as_of`, in its ETag too), a kept report is served until it is older than that,
and requests for a report being computed wait for that one computation."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from swagger_server import create_app, get_database
from swagger_server.reports import ReportCache
from tests.support.auth import AUTH
from tests.support.database import make_settings, query

RANGE = "/api/dashboard?from=2026-01-01&to=2026-01-31"


@pytest.fixture
def kept_app(database_url):
    app = create_app(make_settings(database_url, api={"dashboard_max_age": 30}))
    yield app
    get_database(app).close(timeout=2)


def test_a_report_is_served_again_until_max_age_and_says_how_old_it_is(kept_app, store, db):
    with kept_app.test_client(headers=AUTH) as client:
        first = client.get(RANGE)
        assert first.status_code == 200
        as_of = datetime.fromisoformat(first.json()["as_of"])
        assert abs((datetime.now(as_of.tzinfo) - as_of).total_seconds()) < 60
        tag = first.headers["ETag"]
        assert tag.startswith('W/"')
        # An order placed now is in the next report, not in the kept one.
        query(
            db,
            "INSERT INTO orders (customer_id, total_cents, created_at) VALUES (2, 1000, '2026-01-20T10:00:00Z')",
        )
        again = client.get(RANGE)
        assert again.json() == first.json() and again.headers["ETag"] == tag
        assert client.get(RANGE, headers={"If-None-Match": tag}).status_code == 304
        # Another range or top is another report, read now: it has the order.
        other = client.get(RANGE + "&top=3")
        assert other.json()["totals"]["orders"] == first.json()["totals"]["orders"] + 1
        assert other.json()["as_of"] > first.json()["as_of"]


def test_with_max_age_zero_every_request_reads_its_own_report(client, store, db):
    """`dashboard_max_age = 0` (the tests' default): nothing kept, nothing shared."""
    first = client.get(RANGE)
    query(db, "INSERT INTO orders (customer_id, total_cents, created_at) VALUES (2, 1000, '2026-01-20T10:00:00Z')")
    second = client.get(RANGE)
    assert second.json()["totals"]["orders"] == first.json()["totals"]["orders"] + 1
    assert second.headers["ETag"] != first.headers["ETag"]
    assert client.get(RANGE, headers={"If-None-Match": first.headers["ETag"]}).status_code == 200


def test_a_kept_report_expires_at_max_age():
    now = [100.0]
    cache = ReportCache(30, clock=lambda: now[0])
    computed = []

    def compute():
        computed.append(now[0])
        return {"n": len(computed)}, f"t{len(computed)}"

    assert cache.get("k", compute).as_of == "t1"
    now[0] += 29.9
    assert cache.get("k", compute).as_of == "t1"
    now[0] += 0.2
    assert cache.get("k", compute).as_of == "t2"
    assert cache.get("k", compute, fresh=True).as_of == "t3"  # a consistency token: read for it
    assert cache.get("other", compute).as_of == "t4"
    assert computed == [100.0, 130.1, 130.1, 130.1]


def test_requests_for_a_report_being_computed_wait_for_that_one_computation():
    cache = ReportCache(30)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append(1)
        started.set()
        release.wait(10)
        return {"v": 1}, "as-of"

    results = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", slow)))
    first.start()
    assert started.wait(10)
    waiters = [threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(5)]
    for t in waiters:
        t.start()
    release.set()
    for t in [first, *waiters]:
        t.join(10)
    assert len(calls) == 1 and len(results) == 6 and {r.as_of for r in results} == {"as-of"}


def test_an_error_is_its_own_requests_and_each_waiter_then_reads_for_itself():
    """A read that fails in one request (cancelled on the replica, retried on the primary by that
    request) is not handed to the requests that waited for it: each computes its own."""
    cache = ReportCache(30)
    started, release = threading.Event(), threading.Event()
    calls = []

    def first_fails():
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(10)
            raise RuntimeError("canceling statement due to conflict with recovery")
        return {"v": 1}, "as-of"

    errors, results = [], []

    def call():
        try:
            results.append(cache.get("k", first_fails))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call)]
    threads[0].start()
    assert started.wait(10)
    threads += [threading.Thread(target=call) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 1 and len(results) == 3 and {r.as_of for r in results} == {"as-of"}
    assert cache.get("k", lambda: ({}, "after")).as_of in ("as-of", "after")


def test_the_kept_reports_are_bounded():
    from swagger_server.reports import MAX_REPORTS

    cache = ReportCache(30)
    for i in range(MAX_REPORTS + 50):
        cache.get(i, lambda i=i: ({}, str(i)))
    assert len(cache._reports) == MAX_REPORTS
    assert cache.get(MAX_REPORTS + 49, lambda: ({}, "new")).as_of == str(MAX_REPORTS + 49)
    assert cache.get(0, lambda: ({}, "new")).as_of == "new"  # the oldest went first
