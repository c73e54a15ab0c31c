"""transaction(): BEGIN travels with the block's first statement, counted in round trips at a TCP proxy
in front of the real server (harness/faultproxy.py counts one each time the server answers the client)."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions as ext
import pytest

from harness.faultproxy import FaultProxy
from swagger_server import create_app, get_database
from swagger_server.db.connection import connect, transaction
from tests.support.auth import AUTH
from tests.support.database import make_settings, query, via_port


@pytest.fixture
def proxy(pg_server):
    proxy = FaultProxy("127.0.0.1", pg_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def conn(database_url, proxy):
    conn = connect(via_port(database_url, proxy.port), connect_timeout=5, io_timeout=5, statement_timeout_ms=300)
    yield conn
    conn.close()


def trips(proxy, call) -> int:
    before = proxy.round_trips
    call()
    return proxy.round_trips - before


def test_a_transaction_costs_its_statements_and_the_commit(conn, proxy):
    def two_statements():
        with transaction(conn), conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.execute("SELECT 2")

    assert trips(proxy, two_statements) == 3  # BEGIN with the first, the second, COMMIT
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE


def test_the_observer_counts_a_begin_sent_on_its_own(conn, proxy):
    """The count above can see a separate BEGIN: sent alone, it is a round trip of its own."""

    def begin_alone():
        with conn.cursor() as cur:
            ext.cursor.execute(cur, "BEGIN")
            cur.execute("SELECT 1")
            cur.execute("COMMIT")

    assert trips(proxy, begin_alone) == 3


def test_a_block_without_statements_sends_nothing(conn, proxy):
    def empty():
        with transaction(conn):
            pass

    assert trips(proxy, empty) == 0
    assert conn.pending_begin is None


def test_the_first_statement_runs_inside_the_transaction_with_its_timeout(conn):
    with transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout') AS timeout, now() = statement_timestamp() AS first")
        first = cur.one()
        cur.execute("SELECT pg_sleep(0.05), now() = statement_timestamp() AS same")
        later = cur.one()
    assert first == {"timeout": "300ms", "first": True}
    assert later["same"] is False  # now() stayed the transaction's start: the first statement was inside it
    with pytest.raises(psycopg2.errors.QueryCanceled), transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("SELECT pg_sleep(2)")  # the SET LOCAL sent with BEGIN holds for every statement
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE


def test_a_failed_first_statement_rolls_back_and_leaves_the_connection_idle(conn, proxy, store):
    def duplicate():
        with pytest.raises(psycopg2.errors.UniqueViolation), transaction(conn), conn.cursor() as cur:
            cur.execute("INSERT INTO customers (name, email) SELECT 'x', email FROM customers WHERE id = 1")

    assert trips(proxy, duplicate) == 2  # BEGIN with the INSERT, then ROLLBACK
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM customers")
        assert cur.one() == {"n": 3}


def test_a_raise_after_the_first_statement_rolls_it_back(conn, store):
    with pytest.raises(RuntimeError), transaction(conn), conn.cursor() as cur:
        cur.execute("UPDATE products SET stock = 0 WHERE id = 1")
        raise RuntimeError("after the write")
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    assert query(store, "SELECT stock FROM products WHERE id = 1")[0][0] != 0


def test_the_api_writes_cost_their_statements_and_no_more(database_url, proxy, store):
    """Through the app: a read is one round trip, a customer created two (INSERT with BEGIN, COMMIT), an
    order placed four (lock the customer with BEGIN, lock the products, insert returning the order,
    COMMIT)."""
    app = create_app(make_settings(via_port(database_url, proxy.port)))
    try:
        with app.test_client(headers=AUTH) as client:
            assert client.get("/api/customers/1").status_code == 200  # warm: the pool's connections made
            answers = []
            read = trips(proxy, lambda: answers.append(client.get("/api/customers/2")))
            customer = {"name": "N", "email": "n@example.com"}
            created = trips(proxy, lambda: answers.append(client.post("/api/customers", json=customer)))
            order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
            placed = trips(proxy, lambda: answers.append(client.post("/api/orders", json=order)))
        assert [a.status_code for a in answers] == [200, 201, 201], [a.text for a in answers]
        assert (read, created, placed) == (1, 2, 4)
    finally:
        get_database(app).close(timeout=2)
