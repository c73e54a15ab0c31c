"""Writes racing each other over real gunicorn: every outcome is a 2xx or a 4xx the spec names, never a
5xx, and the data stays whole (issue 19). Integrity errors are answered in one place
(swagger_server/errors.py: integrity_problem), so no controller can forget one.

Each race starts its requests at once from a barrier, on connections opened beforehand.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.auth import AUTH
from tests.support.database import query
from tests.support.servers import live_server

ROUNDS = 25


server = live_server("server", WEB_THREADS=8, DB_POOL_MAX_CONNECTIONS=8, DB_POOL_TIMEOUT=5)


def race(*calls) -> list[requests.Response]:
    """Run the calls at once (each on its own session, started together); their responses in order."""
    sessions = [requests.Session() for _ in calls]
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        return calls[i](sessions[i])

    with ThreadPoolExecutor(len(calls)) as pool:
        responses = list(pool.map(run, range(len(calls))))
    for session in sessions:
        session.close()
    return responses


def _no_5xx(outcomes: collections.Counter, allowed: set[int]) -> None:
    assert set(outcomes) <= allowed, dict(outcomes)


def test_a_customer_deleted_while_eight_orders_for_it_are_placed(server, store):
    base = server.base
    outcomes = collections.Counter()
    for i in range(ROUNDS):
        created = requests.post(
            f"{base}/api/customers", json={"name": f"Racer {i}", "email": f"racer{i}@example.com"}, headers=AUTH
        )
        assert created.status_code == 201
        customer = created.json()["id"]
        order = {"customer_id": customer, "lines": [{"product_id": 1, "quantity": 1}]}
        place = [lambda s, o=order: s.post(f"{base}/api/orders", json=o, headers=AUTH, timeout=10)] * 8
        remove = lambda s, c=customer: s.delete(f"{base}/api/customers/{c}", headers=AUTH, timeout=10)  # noqa: E731
        responses = race(remove, *place)
        outcomes.update(r.status_code for r in responses)
        deleted, orders = responses[0], responses[1:]
        placed = sum(r.status_code == 201 for r in orders)
        if deleted.status_code == 204:
            assert placed == 0  # nothing was placed for a customer that is gone
            assert all(r.status_code == 404 and r.json()["field"] == "customer_id" for r in orders)
        else:
            assert deleted.status_code == 409 and placed >= 1
        left = query(store, "SELECT count(*) FROM orders WHERE customer_id = %s", (customer,))[0][0]
        assert left == placed
        query(store, "UPDATE products SET stock = 10 WHERE id = 1")
    _no_5xx(outcomes, {201, 204, 404, 409})


def test_two_creates_with_one_email(server, store):
    base = server.base
    for i in range(ROUNDS):
        body = {"name": "Twin", "email": f"twin{i}@example.com"}
        upper = {"name": "Twin", "email": f"TWIN{i}@example.com"}
        responses = race(
            lambda s, b=body: s.post(f"{base}/api/customers", json=b, headers=AUTH, timeout=10),
            lambda s, b=upper: s.post(f"{base}/api/customers", json=b, headers=AUTH, timeout=10),
        )
        assert sorted(r.status_code for r in responses) == [201, 409]
        conflict = next(r for r in responses if r.status_code == 409).json()
        assert conflict["field"] == "email" and conflict["type"] == "/api/problems/conflict"
        assert query(store, "SELECT count(*) FROM customers WHERE lower(email) = %s", (f"twin{i}@example.com",)) == [
            (1,)
        ]


def test_an_email_changed_to_one_being_created(server, store):
    base = server.base
    for i in range(ROUNDS):
        email = f"taken{i}@example.com"
        responses = race(
            lambda s, e=email: s.patch(f"{base}/api/customers/2", json={"email": e}, headers=AUTH, timeout=10),
            lambda s, e=email: s.post(
                f"{base}/api/customers", json={"name": "New", "email": e}, headers=AUTH, timeout=10
            ),
        )
        codes = sorted(r.status_code for r in responses)
        assert codes in ([200, 409], [201, 409]), codes


def test_two_creates_with_one_sku(server, store):
    base = server.base
    for i in range(ROUNDS):
        body = {"sku": f"RACE-{i}", "name": "Racer", "price_cents": 100, "stock": 1}
        responses = race(*[lambda s, b=body: s.post(f"{base}/api/products", json=b, headers=AUTH, timeout=10)] * 2)
        assert sorted(r.status_code for r in responses) == [201, 409]
        assert next(r for r in responses if r.status_code == 409).json()["field"] == "sku"


def test_a_product_patched_while_orders_take_its_stock(server, store):
    base = server.base
    outcomes = collections.Counter()
    for _ in range(ROUNDS):
        query(store, "UPDATE products SET stock = 3, price_cents = 500 WHERE id = 2")
        order = {"customer_id": 1, "lines": [{"product_id": 2, "quantity": 1}]}
        responses = race(
            lambda s: s.patch(
                f"{base}/api/products/2", json={"stock": 1, "price_cents": 700}, headers=AUTH, timeout=10
            ),
            *[lambda s, o=order: s.post(f"{base}/api/orders", json=o, headers=AUTH, timeout=10)] * 6,
        )
        outcomes.update(r.status_code for r in responses)
        assert responses[0].status_code == 200
        stock = query(store, "SELECT stock FROM products WHERE id = 2")[0][0]
        assert stock >= 0
        # Every unit sold was in stock when its order ran: orders at the old price came before the
        # PATCH (3 in stock), at the new price after it (1 in stock).
        sold = query(
            store,
            "SELECT unit_price_cents, sum(quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id"
            " WHERE l.product_id = 2 AND o.id > 2 GROUP BY 1",
        )
        after = dict(sold).get(700, 0)
        assert after <= 1 and stock == 1 - after
        query(store, "DELETE FROM order_lines WHERE order_id > 2; DELETE FROM orders WHERE id > 2")
    _no_5xx(outcomes, {200, 201, 409})


def test_a_customer_deleted_twice_and_patched_meanwhile(server, store):
    base = server.base
    outcomes = collections.Counter()
    for i in range(ROUNDS):
        created = requests.post(
            f"{base}/api/customers", json={"name": "Gone", "email": f"gone{i}@example.com"}, headers=AUTH
        ).json()["id"]
        responses = race(
            lambda s, c=created: s.delete(f"{base}/api/customers/{c}", headers=AUTH, timeout=10),
            lambda s, c=created: s.delete(f"{base}/api/customers/{c}", headers=AUTH, timeout=10),
            lambda s, c=created: s.patch(f"{base}/api/customers/{c}", json={"name": "X"}, headers=AUTH, timeout=10),
        )
        outcomes.update(r.status_code for r in responses)
        assert sorted(r.status_code for r in responses[:2]) == [204, 404]
        assert responses[2].status_code in (200, 404)
    _no_5xx(outcomes, {200, 204, 404})


def test_eight_orders_with_one_idempotency_key(server, store):
    base = server.base
    for i in range(ROUNDS):
        order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
        headers = {**AUTH, "Idempotency-Key": f"race-{i}"}
        responses = race(
            *[lambda s, o=order, h=headers: s.post(f"{base}/api/orders", json=o, headers=h, timeout=10)] * 8
        )
        codes = collections.Counter(r.status_code for r in responses)
        assert codes[201] == 1 and set(codes) <= {200, 201, 409}, dict(codes)
        ids = {r.json()["id"] for r in responses if r.status_code in (200, 201)}
        assert len(ids) == 1
        query(store, "UPDATE products SET stock = 10 WHERE id = 1")


def test_eight_writers_holding_one_etag_exactly_one_wins(server, store):
    """Optimistic concurrency (issue 22): the If-Match check and the write are one statement."""
    base = server.base
    for i in range(ROUNDS):
        etag = requests.get(f"{base}/api/products/1", timeout=10).headers["ETag"]
        responses = race(
            *[
                lambda s, n=n, price=1000 + 100 * i + n, tag=etag: s.patch(
                    f"{base}/api/products/1",
                    json={"price_cents": price},
                    headers={**AUTH, "If-Match": tag},
                    timeout=10,
                )
                for n in range(8)
            ]
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] + [412] * 7, codes
        winner = next(r for r in responses if r.status_code == 200)
        current = winner.headers["ETag"]
        assert all(r.headers["ETag"] == current for r in responses if r.status_code == 412)
        price = query(store, "SELECT price_cents FROM products WHERE id = 1")[0][0]
        assert winner.json()["price_cents"] == price  # the one that won is the one stored
        # Without If-Match the same eight all succeed: last write wins (the observer for the above).
        if i == 0:
            plain = race(
                *[
                    lambda s, n=n: s.patch(f"{base}/api/products/1", json={"stock": n}, headers=AUTH, timeout=10)
                    for n in range(8)
                ]
            )
            assert [r.status_code for r in plain] == [200] * 8
