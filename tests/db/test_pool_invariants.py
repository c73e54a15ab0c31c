"""The pool's invariants under many threads and under arbitrary sequences of operations.

- never one connection in two hands;
- idle + in use <= size <= max;
- every checkout is eventually returned and the pool ends with nothing in use.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg2
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from swagger_server.config import PoolSettings
from swagger_server.db.errors import PoolTimeout
from swagger_server.db.pool import ConnectionPool


def check_sizes(stats: dict) -> None:
    assert stats["idle"] + stats["in_use"] <= stats["size"] <= stats["max"], stats


def test_many_threads_never_share_a_connection(database_url):
    pool = ConnectionPool(
        database_url,
        PoolSettings(min_connections=1, max_connections=3, timeout=5, check_idle_after=0.05),
        connect_timeout=2,
    )
    owners: dict[int, int] = {}
    owners_lock = threading.Lock()
    failures: list[str] = []
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            try:
                check_sizes(pool.stats())
            except AssertionError as exc:
                failures.append(str(exc))
            time.sleep(0.001)  # pacing: the checker runs beside the workers

    def worker(n: int):
        rng = random.Random(n)
        for _ in range(150):
            conn = pool.getconn()
            with owners_lock:
                if id(conn) in owners:
                    failures.append(f"connection held by {owners[id(conn)]} handed to {n}")
                owners[id(conn)] = n
            with conn.cursor() as cur:
                roll = rng.random()
                if roll < 0.1:
                    cur.execute("BEGIN")  # left open: the pool must roll it back
                elif roll < 0.15:
                    conn.close()  # broken: the pool must replace it
                else:
                    cur.execute("SELECT %s", (n,))
                    assert cur.fetchone() == (n,)
            if rng.random() < 0.3:
                time.sleep(0.001)  # pacing: interleavings vary
            with owners_lock:
                del owners[id(conn)]
            pool.putconn(conn)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    watcher.join()
    stats = pool.stats()
    pool.close()
    assert failures == []
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    assert stats["requests"] == 12 * 150
    assert stats["timeouts"] == 0


class PoolMachine(RuleBasedStateMachine):
    """Random sequences of take / return / break / leave-a-transaction-open against a real pool."""

    dsn = None

    def __init__(self):
        super().__init__()
        self.pool = ConnectionPool(
            self.dsn,
            PoolSettings(min_connections=0, max_connections=2, timeout=0.05, check_idle_after=60),
            connect_timeout=2,
        )
        self.held: list = []

    @precondition(lambda self: len(self.held) < 2)
    @rule()
    def take(self):
        conn = self.pool.getconn(timeout=2)
        assert all(conn is not other for other in self.held)
        # Whatever the previous borrower left, the connection comes back clean and usable.
        assert not conn.closed
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        self.held.append(conn)

    @precondition(lambda self: len(self.held) == 2)
    @rule()
    def take_when_exhausted_times_out(self):
        with pytest.raises(PoolTimeout):
            self.pool.getconn()

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 1), how=st.sampled_from(["clean", "open-transaction", "failed-transaction", "broken"]))
    def give_back(self, index, how):
        conn = self.held.pop(index % len(self.held))
        with conn.cursor() as cur:
            if how == "open-transaction":
                cur.execute("BEGIN")
                cur.execute("SELECT 1")
            elif how == "failed-transaction":
                cur.execute("BEGIN")
                with pytest.raises(psycopg2.Error):
                    cur.execute("SELECT 1/0")
            elif how == "broken":
                conn.close()
        self.pool.putconn(conn)

    @invariant()
    def sizes_hold(self):
        stats = self.pool.stats()
        check_sizes(stats)
        assert stats["in_use"] == len(self.held)

    def teardown(self):
        for conn in self.held:
            self.pool.putconn(conn)
        self.pool.close(timeout=1)


def test_pool_state_machine(database_url):
    PoolMachine.dsn = database_url
    machine = PoolMachine.TestCase
    machine.settings = settings(
        max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    machine("runTest").runTest()
