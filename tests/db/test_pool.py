"""The pool itself, against a real PostgreSQL: reuse, reset, recycling, fail-fast, fairness, leaks."""

import logging
import threading
import time

import psycopg2
import pytest

from harness.waiting import wait_until
from swagger_server.config import PoolSettings
from swagger_server.db.embedded import free_port
from swagger_server.db.errors import DatabaseUnavailable, PoolClosed, PoolTimeout, TooManyWaiters
from swagger_server.db.pool import ConnectionPool
from tests.support.database import query


@pytest.fixture
def make_pool(database_url):
    pools = []

    def make(dsn=None, **options):
        values = {
            "min_connections": 1,
            "max_connections": 3,
            "timeout": 1.0,
            "check_idle_after": 60.0,
            "reconnect_max_delay": 0.5,
            **options,
        }
        pool = ConnectionPool(dsn or database_url, PoolSettings(**values), connect_timeout=2)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(timeout=1)


def backend_pid(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def test_hot_connection_is_reused(make_pool):
    pool = make_pool()
    conn = pool.getconn()
    pid = backend_pid(conn)
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn and backend_pid(again) == pid
    pool.putconn(again)


def test_min_connections_are_kept_warm(make_pool, db):
    """Connections above min idle out after max_idle; the min ones stay, however long they idle, and
    nothing is closed on return."""
    pool = make_pool(min_connections=2, max_connections=3, max_idle=0.3)
    pool.wait_ready(5)
    conns = [pool.getconn() for _ in range(3)]
    pids = sorted(backend_pid(conn) for conn in conns)
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats()["size"] == 3 and pool.stats()["connections_closed"] == 0  # no close on return
    wait_until(lambda: pool.stats()["size"] == 2, timeout=3, message="the one above min to idle out")
    time.sleep(1.0)  # over three times max_idle, four maintenance passes: the two at min stay
    stats = pool.stats()
    assert stats["size"] == 2 and stats["idle"] == 2 and stats["recycled"] == 1, stats
    alive = query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))[0][0]
    assert alive == 2


def test_lifetime_and_idle_limits_are_jittered_per_connection(make_pool):
    """Connections opened together do not expire together: each gets 90-100 % of max_lifetime and
    of max_idle, drawn on its own."""
    pool = make_pool(min_connections=0, max_connections=6, max_lifetime=1000.0, max_idle=500.0)
    conns = [pool.getconn() for _ in range(6)]
    lifetimes = [conn.expires_at - conn.created_at for conn in conns]
    idles = [conn.max_idle for conn in conns]
    for conn in conns:
        pool.putconn(conn)
    assert all(900.0 <= life <= 1000.0 for life in lifetimes), lifetimes
    assert all(450.0 <= idle <= 500.0 for idle in idles), idles
    assert len({round(life, 3) for life in lifetimes}) == 6 and len({round(i, 3) for i in idles}) == 6


def test_putconn_rolls_back_an_open_transaction(make_pool, store):
    pool = make_pool(max_connections=1)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO customers (name, email) VALUES ('Tx', 'tx@example.com')")
    pool.putconn(conn)
    assert query(store, "SELECT count(*) FROM customers WHERE email = 'tx@example.com'") == [(0,)]
    again = pool.getconn()
    assert again is conn and again.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    pool.putconn(again)


def test_failed_transaction_is_rolled_back_too(make_pool):
    pool = make_pool(max_connections=1)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.execute("SELECT 1/0")
    pool.putconn(conn)
    again = pool.getconn()
    assert backend_pid(again) > 0
    pool.putconn(again)


def test_a_connection_whose_rollback_fails_frees_its_slot(make_pool, db):
    """Returned in a transaction whose backend is gone: the ROLLBACK fails, the connection is
    discarded and its slot freed (psycopg2's own pool keeps counting it), so the next checkout of
    this one-connection pool gets a new connection instead of a timeout."""
    pool = make_pool(min_connections=0, max_connections=1, timeout=2)
    conn = pool.getconn()
    pid = backend_pid(conn)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
    query(db, "SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))[0][0] == 0)
    pool.putconn(conn)
    assert conn.closed
    stats = pool.stats()
    assert stats["rollbacks"] == 1 and stats["size"] == 0 and stats["in_use"] == 0, stats
    fresh = pool.getconn()
    assert fresh is not conn and backend_pid(fresh) != pid
    pool.putconn(fresh)


def test_broken_connection_is_discarded_and_replaced(make_pool):
    pool = make_pool(min_connections=1, max_connections=1)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    fresh = pool.getconn()
    assert fresh is not conn and backend_pid(fresh) > 0
    pool.putconn(fresh)
    assert pool.stats()["size"] == 1


def test_killed_idle_backend_costs_the_client_nothing_and_no_ping(make_pool, db):
    pool = make_pool(min_connections=2, max_connections=2, check_idle_after=60.0)
    pool.wait_ready(5)
    pids = []
    conns = [pool.getconn() for _ in range(2)]
    for conn in conns:
        pids.append(backend_pid(conn))
        pool.putconn(conn)
    query(db, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))[0][0] == 0)
    for _ in range(2):
        conn = pool.getconn()
        assert backend_pid(conn) not in pids
        pool.putconn(conn)
    stats = pool.stats()
    assert stats["discarded_dead"] >= 1 and stats["pings"] == 0


def test_idle_connection_is_pinged_after_the_threshold(make_pool):
    pool = make_pool(check_idle_after=0.1)
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.getconn() is conn
    pool.putconn(conn)
    assert pool.stats()["pings"] == 0  # hot: no round trip
    time.sleep(0.2)  # time passing: past check_idle_after
    assert pool.getconn() is conn
    pool.putconn(conn)
    assert pool.stats()["pings"] == 1


def test_connections_are_recycled_after_max_lifetime(make_pool):
    pool = make_pool(max_connections=1, max_lifetime=0.3)
    conn = pool.getconn()
    first = backend_pid(conn)
    pool.putconn(conn)
    time.sleep(0.45)  # time passing: past max_lifetime
    conn = pool.getconn()
    assert backend_pid(conn) != first
    pool.putconn(conn)
    assert pool.stats()["recycled"] >= 1


def test_idle_connections_above_min_are_closed(make_pool):
    pool = make_pool(min_connections=1, max_connections=3, max_idle=0.3)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats()["size"] == 3
    wait_until(lambda: pool.stats()["size"] == 1, timeout=3, message="idle connections to shrink to min")


@pytest.mark.timing
def test_timeout_when_every_connection_is_busy(make_pool):
    pool = make_pool(max_connections=1, timeout=1.0)
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"after 1\.\d\d s"):
        pool.getconn()
    assert 1.0 <= time.monotonic() - start <= 1.1  # the timeout, +10 %
    pool.putconn(held)


@pytest.mark.timing
def test_too_many_waiters_is_refused_at_once(make_pool):
    pool = make_pool(max_connections=1, max_waiting=1, timeout=5)
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn()))
    waiter.start()
    wait_until(lambda: pool.stats()["waiting"] == 1)
    start = time.monotonic()
    with pytest.raises(TooManyWaiters):
        pool.getconn()
    assert time.monotonic() - start < 0.5  # refused, not queued: a tenth of the 5 s timeout
    assert pool.stats()["timeouts"] == 0
    pool.putconn(held)
    waiter.join()
    assert pool.stats()["rejected"] == 1


def test_waiters_are_served_in_arrival_order(make_pool):
    pool = make_pool(max_connections=1, timeout=5)
    held = pool.getconn()
    served = []

    def wait(n):
        conn = pool.getconn()
        served.append(n)
        pool.putconn(conn)

    threads = []
    for n in range(5):
        thread = threading.Thread(target=wait, args=(n,))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=n: pool.stats()["waiting"] == n + 1)
    pool.putconn(held)
    for thread in threads:
        thread.join()
    assert served == [0, 1, 2, 3, 4]


@pytest.mark.timing
def test_unreachable_database_fails_fast_and_says_so(make_pool):
    pool = make_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        min_connections=0,
        timeout=5,
        reconnect_initial_delay=0.5,
        reconnect_max_delay=2,
    )
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as first:
        pool.getconn()
    assert time.monotonic() - start < 1.0  # not the 5 s pool timeout
    assert "Connection refused" in str(first.value) or "refused" in str(first.value).lower()
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        pool.getconn()
    assert time.monotonic() - start < 1.0
    assert pool.stats()["database_up"] is False


def test_leaked_connection_is_reported_with_the_borrowers_stack(make_pool, caplog):
    pool = make_pool(leak_threshold=0.2)
    with caplog.at_level(logging.WARNING, logger="swagger_server.db.pool"):
        conn = pool.getconn()
        # The warning itself, not the counter: the maintenance thread counts the leak just before it
        # logs it, so a test waiting on the counter could look at the log in between.
        wait_until(lambda: any("held for" in r.getMessage() for r in caplog.records), timeout=3)
        assert pool.stats()["leaks"] == 1
        pool.putconn(conn)
    held = [r.getMessage() for r in caplog.records if "held for" in r.getMessage()]
    assert held and "test_leaked_connection_is_reported_with_the_borrowers_stack" in held[0]
    assert any("came back after" in r.getMessage() for r in caplog.records)


def test_close_is_idempotent_and_refuses_new_checkouts(make_pool):
    pool = make_pool()
    conn = pool.getconn()
    pool.putconn(conn)
    pool.close()
    pool.close()
    assert conn.closed
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_a_failed_connect_is_not_an_outage_while_connections_work(make_pool, db, database_url):
    """With one connection open and new ones refused, a waiter waits for the open one instead of a 503."""
    query(db, "DROP ROLE IF EXISTS limited")
    query(db, "CREATE ROLE limited LOGIN CONNECTION LIMIT 1")
    dsn = database_url.replace("postgres@", "limited@")
    pool = make_pool(dsn, min_connections=1, max_connections=3, timeout=3)
    pool.wait_ready(5)
    held = pool.getconn()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    wait_until(lambda: pool.stats()["connection_errors"] >= 1, message="the refused connect")
    assert waiter.is_alive()  # still waiting, not failed
    pool.putconn(held)
    waiter.join(timeout=3)
    assert got == [held]
    pool.putconn(held)
    pool.close()
    query(db, "DROP ROLE limited")


class _GapEvent(threading.Event):
    """`close()` sets the pool's stopping event after it has taken the waiters out of the queue. This
    one, on `set()`, first lets `hold` finish: a waiter whose own timeout fires in that gap. The
    interleaving is forced, not hoped for."""

    def __init__(self, hold: threading.Thread):
        super().__init__()
        self.hold = hold

    def set(self):
        self.hold.join(timeout=5)
        super().set()


def test_a_waiter_timing_out_while_close_fails_it_gets_one_clean_error(make_pool):
    """The waiter race: close() takes a waiter out of the queue; that waiter's own timeout fires before
    close() has told it why. It must get PoolClosed, never ValueError (a 500)."""
    pool = make_pool(min_connections=1, max_connections=1, timeout=0.3)
    held = pool.getconn()
    outcome = []

    def wait():
        try:
            pool.getconn()
        except Exception as exc:  # the outcome under test is the exception's type
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: pool.stats()["waiting"] == 1, message="the waiter to queue")
    pool._stopping = _GapEvent(waiter)
    pool.close(timeout=0.1)
    waiter.join(5)
    pool.putconn(held)
    assert len(outcome) == 1 and isinstance(outcome[0], PoolClosed), outcome


@pytest.mark.timing
def test_a_reconnect_in_progress_never_pauses_leak_reports(database_url, caplog):
    """Maintenance is a thread of its own: with every connector stuck opening a connection (a link
    that accepts and never answers, connect timeout 3 s), a leaked connection is still reported
    within its threshold (0.3 s) plus a maintenance tick (0.25 s), with margin: 1.5 s, half the
    3 s the connectors are stuck for (maintenance in a connector thread waited them out)."""
    from urllib.parse import urlsplit

    from harness.faultproxy import FaultProxy

    target = urlsplit(database_url)
    proxy = FaultProxy(target.hostname, target.port).start()
    dsn = database_url.replace(f":{target.port}/", f":{proxy.port}/")
    settings = PoolSettings(min_connections=1, max_connections=3, timeout=4.0, leak_threshold=0.3)
    pool = ConnectionPool(dsn, settings, connect_timeout=3)
    waiters = []
    try:
        pool.wait_ready(5)
        with caplog.at_level(logging.WARNING):
            leaked = pool.getconn()
            proxy.blackhole = True  # new connections are accepted and never answered
            for _ in range(2):
                waiter = threading.Thread(target=_wait_for_a_connection, args=(pool,), daemon=True)
                waiter.start()
                waiters.append(waiter)
            wait_until(lambda: pool.stats()["opening"] == 2, timeout=2, message="both connectors to be opening")
            start = time.monotonic()
            wait_until(
                lambda: any("held for" in r.getMessage() for r in caplog.records),
                timeout=1.5,
                message="the leak report while the connectors are stuck",
            )
            assert pool.stats()["opening"] == 2, "the report must come while both connectors are stuck"
            assert time.monotonic() - start < 1.5
        proxy.blackhole = False
        pool.putconn(leaked)
    finally:
        for waiter in waiters:
            waiter.join(10)
        pool.close(timeout=1)
        proxy.stop()


def _wait_for_a_connection(pool) -> None:
    """A checkout waiting while the link is black-holed: served once the leaked connection comes back
    (or a PoolError at its timeout), and given back."""
    from swagger_server.db.errors import PoolError

    try:
        conn = pool.getconn()
    except PoolError:
        return
    pool.putconn(conn)
