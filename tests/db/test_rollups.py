"""The dashboard's rollups (db/rollups.py, schema 013): the report read from them equals the direct
query over the raw rows, whatever was written, changed or deleted, whenever the roller last ran."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.waiting import wait_until
from swagger_server.db import rollups as roller
from swagger_server.db.queries import dashboard
from swagger_server.db.queries.rollups import NAME
from tests.support.database import admin_connect, query, schema_database

DAY0 = date(2026, 1, 1)
SPAN = 70  # days the random orders fall in: whole months and the days at their ends


@pytest.fixture(scope="module")
def rollup_url(pg_server):
    """A database of its own with the schema and a small catalogue: 30 customers, 8 products."""
    url = schema_database(pg_server, "store_rollups")
    conn = admin_connect(url)
    query(
        conn,
        "INSERT INTO customers (name, email) SELECT 'C ' || i, 'c' || i || '@example.com' FROM generate_series(1, 30) i",
    )
    query(
        conn,
        "INSERT INTO products (sku, name, price_cents, stock) SELECT 'P' || i, 'P ' || i, 100 * i, 1000000"
        " FROM generate_series(1, 8) i",
    )
    conn.close()
    return url


@pytest.fixture
def conn(rollup_url):
    conn = admin_connect(rollup_url)
    query(
        conn,
        "TRUNCATE orders, order_lines, sales_days, sales_product_days, sales_product_months,"
        " sales_rollup_dirty, sales_rollup_state RESTART IDENTITY CASCADE",
    )
    yield conn
    conn.close()


def place(conn, customer: int, day: int, seconds: int, lines: list[tuple[int, int]]) -> int:
    """An order as the API places it (order, then its lines, in one transaction); its id."""
    created = f"{DAY0 + timedelta(days=day)} 00:00:00+00"
    lines = list(dict(lines).items())  # one line per product
    total = sum(100 * p * q for p, q in lines)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(
            "INSERT INTO orders (customer_id, total_cents, created_at) VALUES (%s, %s, %s::timestamptz"
            " + make_interval(secs => %s)) RETURNING id",
            (customer, total, created, seconds),
        )
        order_id = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)"
            " SELECT %s, p, q, 100 * p FROM unnest(%s::int[], %s::int[]) AS l (p, q)",
            (order_id, [p for p, _ in lines], [q for _, q in lines]),
        )
        cur.execute("COMMIT")
    return order_id


def assert_report_is_direct(conn, start: date, end: date, top: int) -> None:
    report, _ = dashboard.sales_report(conn, start, end, top, timeout_ms=30_000)
    assert report == dashboard.direct_report(conn, start, end, top), (start, end, top)


orders = st.tuples(
    st.integers(1, 30),  # customer
    st.integers(0, SPAN - 1),  # day
    st.integers(0, 86_399),  # second of the day
    st.lists(st.tuples(st.integers(1, 8), st.integers(1, 5)), min_size=1, max_size=4),
)
# What happens between two reports: orders placed, a pass of the roller, or a change the API never
# makes but psql can (a status, a day, a total, a line added or removed, an order deleted).
steps = st.one_of(
    st.tuples(st.just("place"), orders),
    st.tuples(st.just("roll"), st.integers(1, 20)),
    st.tuples(st.just("status"), st.integers(0, 10_000)),
    st.tuples(st.just("move"), st.integers(0, 10_000), st.integers(0, SPAN - 1)),
    st.tuples(st.just("total"), st.integers(0, 10_000), st.integers(0, 99_999)),
    st.tuples(st.just("add_line"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("drop_line"), st.integers(0, 10_000)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
)
ranges = st.tuples(st.integers(-3, SPAN + 3), st.integers(0, SPAN + 5), st.integers(1, 6))


def apply(conn, step) -> None:
    kind = step[0]
    ids = [row[0] for row in query(conn, "SELECT id FROM orders ORDER BY id")]
    if kind == "place":
        place(conn, *step[1])
    elif kind == "roll":
        roller.roll_once(conn, batch=step[1])
    elif not ids:
        return
    else:
        order_id = ids[step[1] % len(ids)]
        if kind == "status":
            query(conn, "UPDATE orders SET status = 'shipped' WHERE id = %s", (order_id,))
        elif kind == "move":
            query(
                conn,
                "UPDATE orders SET created_at = %s::timestamptz + interval '1 hour' WHERE id = %s",
                (f"{DAY0 + timedelta(days=step[2])} 00:00:00+00", order_id),
            )
        elif kind == "total":
            query(conn, "UPDATE orders SET total_cents = %s WHERE id = %s", (step[2], order_id))
        elif kind == "add_line":
            query(
                conn,
                "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)"
                " VALUES (%s, %s, 1, 7) ON CONFLICT DO NOTHING",
                (order_id, step[2]),
            )
        elif kind == "drop_line":
            query(
                conn,
                "DELETE FROM order_lines WHERE ctid = (SELECT ctid FROM order_lines WHERE order_id = %s LIMIT 1)",
                (order_id,),
            )
        elif kind == "delete":
            query(conn, "DELETE FROM orders WHERE id = %s", (order_id,))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(steps, min_size=1, max_size=40), checks=st.lists(ranges, min_size=1, max_size=4))
def test_the_report_equals_the_direct_query_whatever_happened_and_whenever_the_roller_ran(conn, history, checks):
    query(
        conn,
        "TRUNCATE orders, order_lines, sales_days, sales_product_days, sales_product_months,"
        " sales_rollup_dirty, sales_rollup_state RESTART IDENTITY CASCADE",
    )
    for step in history:
        apply(conn, step)
    for first, days, top in checks:
        start = DAY0 + timedelta(days=first)
        assert_report_is_direct(conn, start, start + timedelta(days=days), top)
    # And after the roller has caught up with everything.
    roller.catch_up(conn, batch=7, say=lambda _: None)
    assert query(conn, "SELECT count(*) FROM sales_rollup_dirty") == [(0,)]
    for first, days, top in checks:
        start = DAY0 + timedelta(days=first)
        assert_report_is_direct(conn, start, start + timedelta(days=days), top)


def test_the_roller_waits_for_orders_in_flight_and_skips_none(conn, rollup_url):
    """An order whose transaction is still open when later ones commit: a roller that moved its
    watermark past the later ones would never count it. It waits for it (and, past its lock timeout,
    gives up the pass) instead."""
    place(conn, 1, 3, 0, [(1, 1)])
    slow = admin_connect(rollup_url)
    try:
        with slow.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "INSERT INTO orders (customer_id, total_cents, created_at) VALUES (2, 500, '2026-01-04 10:00+00')"
            )
            cur.execute("SELECT currval(pg_get_serial_sequence('orders', 'id'))")
            slow_id = cur.fetchone()[0]
            cur.execute("INSERT INTO order_lines VALUES (%s, 5, 1, 500)", (slow_id,))
        later = place(conn, 3, 3, 10, [(2, 2)])
        assert later > slow_id
        assert roller.roll_once(conn, batch=100, lock_timeout_ms=100) is None  # gave up: nothing moved
        assert query(conn, "SELECT count(*) FROM sales_rollup_state") == [(0,)]
        query(slow, "COMMIT")
    finally:
        slow.close()
    done = roller.roll_once(conn, batch=100)
    assert (done.first, done.last) == (0, later)
    assert query(conn, "SELECT last_order_id FROM sales_rollup_state WHERE name = %s", (NAME,)) == [(later,)]
    assert query(conn, "SELECT units FROM sales_product_days WHERE product_id = 5") == [(1,)]
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=10), 5)


def test_two_rollers_at_once_count_every_order_once(conn, rollup_url):
    for i in range(60):
        place(conn, 1 + i % 30, i % 20, i, [(1 + i % 8, 1)])
    errors: list[BaseException] = []

    def run():
        c = admin_connect(rollup_url)
        try:
            for _ in range(30):
                roller.roll_once(c, batch=3)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    roller.catch_up(conn, batch=50, say=lambda _: None)
    assert query(conn, "SELECT sum(orders) FROM sales_days") == [(60,)]
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=30), 10)


def test_an_order_pays_no_rollup_row_in_its_own_transaction(conn, rollup_url):
    """No hot row: placing an order (past the watermark, as every new order is) writes nothing to the
    rollup tables in its transaction; its figures are read from the raw rows until the roller adds them."""
    first = place(conn, 1, 1, 0, [(1, 1)])
    roller.catch_up(conn, say=lambda _: None)

    def rollup_writes_in(statements) -> dict:
        # A connection of its own: a backend's view also holds its earlier, not yet flushed, counts.
        fresh = admin_connect(rollup_url)
        with fresh, fresh.cursor() as cur:
            cur.execute("BEGIN")
            for statement, args in statements:
                cur.execute(statement, args)
            cur.execute(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables"
                " WHERE relname LIKE 'sales%%' AND n_tup_ins + n_tup_upd + n_tup_del > 0"
            )
            writes = dict(cur.fetchall())
            cur.execute("COMMIT")
        fresh.close()
        return writes

    placed = rollup_writes_in(
        [
            ("INSERT INTO orders (customer_id, total_cents, created_at) VALUES (2, 300, '2026-01-02 08:00+00')", None),
            ("INSERT INTO order_lines SELECT currval(pg_get_serial_sequence('orders', 'id')), 2, 3, 100", None),
        ]
    )
    assert placed == {}
    # The observer sees a write where there is one: a line added to an order already rolled up.
    late = rollup_writes_in([("INSERT INTO order_lines VALUES (%s, 4, 1, 400)", (first,))])
    assert late == {"sales_rollup_dirty": 1}
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=3), 5)


def test_a_store_upgraded_to_the_rollups_fills_them_in_batches_past_a_long_reader(conn, rollup_url):
    """Schema 013 on a store that already has orders leaves the rollups empty (watermark 0): reports
    stay exact from the raw rows, and `catch_up` fills them a batch at a time while a long reader
    holds its snapshot and orders keep being placed: it takes no lock that either waits behind."""
    for i in range(200):
        place(conn, 1 + i % 30, i % SPAN, i, [(1 + i % 8, 1 + i % 3)])
    query(conn, "TRUNCATE sales_days, sales_product_days, sales_product_months, sales_rollup_state")
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=SPAN), 5)
    reader = admin_connect(rollup_url)
    writer = admin_connect(rollup_url)
    said: list[str] = []
    try:
        query(reader, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        query(reader, "SELECT count(*) FROM orders")  # a long report, holding its snapshot
        query(writer, "SET lock_timeout = '2s'")
        placed = []
        for i in range(5):
            placed.append(place(writer, 1 + i, i, 99, [(3, 1)]))
            if i < 2:
                roller.roll_once(conn, batch=40)  # the roller in a worker, a pass at a time
        total = roller.catch_up(conn, batch=40, say=said.append)
        assert placed and total > 0 and len(said) >= 2  # batches, one line each
    finally:
        query(reader, "ROLLBACK")
        reader.close()
        writer.close()
    assert query(conn, "SELECT sum(orders) FROM sales_days") == [(205,)]
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=SPAN), 5)


def test_orders_placed_while_the_roller_runs_are_each_counted_once(conn, rollup_url):
    """Writers on their own connections place orders while a roller makes passes: every order is in
    the rollups exactly once, and every report on the way equals the direct query."""
    writers_done = threading.Event()
    errors: list[BaseException] = []
    mismatches: list[tuple] = []

    def write(n: int):
        c = admin_connect(rollup_url)
        try:
            for i in range(40):
                place(c, 1 + (n * 7 + i) % 30, (n * 13 + i) % SPAN, i, [(1 + (n + i) % 8, 1 + i % 3)])
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            c.close()

    def roll():
        c = admin_connect(rollup_url)
        try:
            while not writers_done.is_set():
                roller.roll_once(c, batch=5, lock_timeout_ms=1000)
                query(c, "BEGIN ISOLATION LEVEL REPEATABLE READ")  # both reads in one snapshot
                report, _ = dashboard.sales_report(c, DAY0, DAY0 + timedelta(days=SPAN), 8, timeout_ms=30_000)
                direct = dashboard.direct_report(c, DAY0, DAY0 + timedelta(days=SPAN), 8)
                query(c, "COMMIT")
                if report != direct:
                    mismatches.append((report["totals"], direct["totals"]))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            c.close()

    writers = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    rolling = threading.Thread(target=roll)
    rolling.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    writers_done.set()
    rolling.join(60)
    assert not errors, errors
    assert not mismatches, mismatches[:3]
    roller.catch_up(conn, batch=50, say=lambda _: None)
    assert query(conn, "SELECT sum(orders) FROM sales_days") == [(120,)]
    assert_report_is_direct(conn, DAY0, DAY0 + timedelta(days=SPAN), 8)


def test_the_roller_in_a_worker_rolls_up_what_the_api_places(database_url, store, db):
    """The service's own roller (a thread per worker, `[API] dashboard_rollup_interval`): orders placed
    through the API reach the rollups within a few passes, and its connection goes back to the pool."""
    from swagger_server import create_app, get_database
    from tests.support.auth import AUTH
    from tests.support.database import make_settings

    app = create_app(make_settings(database_url, api={"dashboard_rollup_interval": 0.1}))
    try:
        with app.test_client(headers=AUTH) as client:
            for i in range(5):
                placed = client.post(
                    "/api/orders", json={"customer_id": 1 + i % 3, "lines": [{"product_id": 1, "quantity": 1}]}
                )
                assert placed.status_code == 201, placed.text
            newest = query(db, "SELECT max(id) FROM orders")[0][0]
            wait_until(
                lambda: (
                    query(db, "SELECT last_order_id FROM sales_rollup_state WHERE name = %s", (NAME,)) == [(newest,)]
                ),
                timeout=10,
                message="the roller to reach the newest order",
            )
            assert query(db, "SELECT sum(orders) FROM sales_days") == query(db, "SELECT count(*) FROM orders")
            stats = get_database(app).pool.stats()
            wait_until(lambda: get_database(app).pool.stats()["in_use"] == 0, timeout=5, message="the connection back")
            assert stats["max"] >= 1
            report = client.get("/api/dashboard?from=2025-01-01&to=2027-12-31").json()
            direct = dashboard.direct_report(db, date(2025, 1, 1), date(2027, 12, 31), 5)
            assert {k: report[k] for k in direct} == direct
    finally:
        get_database(app).close(timeout=2)
