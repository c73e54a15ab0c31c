"""The handler threads' queue (first come, first served, visible in /metrics), the event-loop lag gauge,
and an access log that never makes the event loop wait on stdout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.observability.logs import BackgroundStreamHandler
from swagger_server.observability.sampling import LoopLag
from swagger_server.state import of_flask
from tests.support.auth import AUTH
from tests.support.database import admin_connect, make_settings, query


def test_waiting_requests_are_served_in_arrival_order_and_counted_in_metrics(database_url, store):
    """One handler thread, held by an order waiting on a row lock; three reads arrive one after
    another. /metrics shows 1 busy and 3 waiting; once the lock goes, they are served in that order.

    The order is the one in which the handler thread took them (recorded inside the thread, as each
    starts), not the one in which the clients' answers came back: three client threads woken at once
    can record their answers in any order (the flake of issue 20)."""
    app = create_app(
        make_settings(database_url, pool={"timeout": 10.0, "statement_timeout_ms": 10_000}, server={"threads": 1})
    )
    locker = admin_connect(database_url)
    handlers = of_flask(app.app).handlers
    served: list[str] = []
    inner = handlers.wsgi_app

    def recording(environ, start_response):
        served.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    handlers.wsgi_app = recording
    try:
        with app.test_client(headers=AUTH) as client:
            query(locker, "BEGIN")
            query(locker, "SELECT * FROM products WHERE id = 1 FOR UPDATE")
            order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
            holder = threading.Thread(target=lambda: client.post("/api/orders", json=order))
            holder.start()
            wait_until(lambda: handlers.busy == 1, message="the order to take the only handler thread")
            answers: dict[int, int] = {}
            readers = []
            for customer in (1, 2, 3):
                reader = threading.Thread(
                    target=lambda c=customer: answers.__setitem__(c, client.get(f"/api/customers/{c}").status_code)
                )
                reader.start()
                readers.append(reader)
                wait_until(lambda n=customer: handlers.waiting == n, message=f"read {customer} to wait in line")
            metrics = client.get("/metrics").text
            assert "store_api_handler_busy 1.0" in metrics
            assert "store_api_handler_queue 3.0" in metrics
            query(locker, "ROLLBACK")
            for thread in (holder, *readers):
                thread.join(10)
        assert served == ["/api/orders", "/api/customers/1", "/api/customers/2", "/api/customers/3"]
        assert answers == {1: 200, 2: 200, 3: 200}
        assert handlers.busy == 0 and handlers.waiting == 0
    finally:
        locker.close()
        get_database(app).close(timeout=2)


def test_event_loop_lag_is_the_longest_a_timer_fired_late():
    async def scenario():
        lag = LoopLag().start()
        await asyncio.sleep(0.2)
        idle = lag.take()
        time.sleep(0.3)  # a callback that blocks the loop
        await asyncio.sleep(0.1)
        blocked = lag.take()
        lag.stop()
        return idle, blocked

    idle, blocked = asyncio.run(scenario())
    assert idle < 0.05
    assert 0.25 <= blocked < 0.5


class _StuckStream:
    """A stdout whose reader stopped reading: write blocks until `release` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.written: list[str] = []

    def write(self, text: str) -> None:
        self.release.wait(10)
        self.written.append(text)

    def flush(self) -> None:
        pass


def test_a_stuck_stdout_never_blocks_the_caller_and_its_backlog_is_bounded():
    stream = _StuckStream()
    drops = []
    handler = BackgroundStreamHandler(stream, on_drop=lambda: drops.append(1))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.MAX_QUEUED = 5
    log = logging.getLogger("tests.stuck")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("first")  # taken by the writer, which then blocks in write()
        wait_until(lambda: handler._queue.qsize() == 0, message="the writer to take the first line")
        emitting = threading.Thread(target=lambda: [log.warning("line %d", i) for i in range(20)])
        emitting.start()
        emitting.join(2)
        assert not emitting.is_alive(), "logging blocked on the stuck stream"
        assert handler._queue.qsize() == 5
        assert handler.dropped == 15 and len(drops) == 15  # counted, and the app told (its metric)
        stream.release.set()
        wait_until(lambda: "line 4" in "".join(stream.written), message="the backlog to be written")
        assert "".join(stream.written).splitlines() == ["first", *(f"line {i}" for i in range(5))]
    finally:
        stream.release.set()
        log.removeHandler(handler)


class _Writes:
    """A stream that records what each flush sends: one write to the pipe."""

    def __init__(self):
        self.pending = ""
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.pending += text

    def flush(self) -> None:
        if self.pending:
            self.writes.append(self.pending)
            self.pending = ""


def test_log_writes_are_whole_lines_of_at_most_pipe_buf_bytes():
    """Two workers share one stdout pipe; a write over PIPE_BUF bytes may be split and interleaved
    with the other's, mid-line."""
    stream = _Writes()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("tests.pipe_buf")
    log.propagate = False
    log.addHandler(handler)
    try:
        lines = [f"{i:04d} " + "x" * 195 for i in range(100)]  # 20 000 bytes in all
        for line in lines:
            log.warning(line)
        handler.flush()
        wait_until(lambda: "".join(stream.writes).count("\n") == 100, message="every line written")
        assert len(stream.writes) >= 5
        assert all(len(w.encode()) <= handler.PIPE_BUF and w.endswith("\n") for w in stream.writes)
        assert "".join(stream.writes).splitlines() == lines
    finally:
        log.removeHandler(handler)


@contextlib.contextmanager
def row_locked(locker):
    """Product 1's row locked by `locker` (an order for it waits, holding its handler thread), released
    on the way out however the block ends: a failing assertion must not leave the app's shutdown
    waiting for the held requests."""
    query(locker, "BEGIN")
    query(locker, "SELECT * FROM products WHERE id = 1 FOR UPDATE")
    try:
        yield
    finally:
        query(locker, "ROLLBACK")


def held_app(database_url, **api):
    """An app with 2 handler threads whose token TOKEN may hold one (caller_share 0.5), a second token,
    and a locker that makes an order wait on a row lock (holding a thread)."""
    settings = make_settings(
        database_url,
        pool={"timeout": 10.0, "statement_timeout_ms": 10_000},
        server={"threads": 2},
        api={"admission_timeout": 1.0, "caller_share": 0.5, "tokens": ("test-token", "other-token"), **api},
    )
    return create_app(settings)


def test_one_caller_holds_at_most_its_share_and_the_other_threads_stay_for_the_others(database_url, store):
    """Token A holds its one thread (an order waiting on a row lock): A's next request waits, then is
    429 too-many-concurrent (a thread was free all along: its own share held it back), while token B
    and an anonymous caller are served at once on the free thread."""
    app = held_app(database_url)
    locker = admin_connect(database_url)
    handlers = of_flask(app.app).handlers
    assert handlers.cap == 1
    placed: dict = {}
    order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    try:
        with app.test_client(headers=AUTH) as client:
            holder = threading.Thread(target=lambda: placed.update(r=client.post("/api/orders", json=order)))
            try:
                with row_locked(locker):
                    holder.start()
                    wait_until(lambda: handlers.busy == 1, message="A's order to hold its one thread")
                    other = client.get("/api/customers/2", headers={"Authorization": "Bearer other-token"})
                    assert other.status_code == 200, other.text  # B: at once, on the free thread
                    anonymous = client.get("/api/products/1", headers={"Authorization": ""})
                    assert anonymous.status_code == 200, anonymous.text
                    refused = client.get("/api/customers/3")  # A again: waits its turn, then 429
                    assert refused.status_code == 429, refused.text
                    assert refused.json()["type"] == "/api/problems/too-many-concurrent"
                    assert refused.headers["retry-after"] == "1"
                    assert handlers.over_share == 1 and handlers.rejected == 0
            finally:
                holder.join(15)
        assert placed["r"].status_code == 201
        assert handlers.busy == 0 and handlers._inflight == {}  # every slot given back
    finally:
        locker.close()
        get_database(app).close(timeout=2)


def test_a_callers_waiting_request_goes_as_soon_as_its_own_finishes(database_url, store):
    """A's second request waits while A holds its share, and takes the slot A's first frees (not a 429)."""
    app = held_app(database_url, admission_timeout=10.0)
    locker = admin_connect(database_url)
    handlers = of_flask(app.app).handlers
    results: dict = {}
    order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    try:
        with app.test_client(headers=AUTH) as client:
            holder = threading.Thread(target=lambda: results.update(order=client.post("/api/orders", json=order)))
            second = threading.Thread(target=lambda: results.update(read=client.get("/api/customers/1")))
            try:
                with row_locked(locker):
                    holder.start()
                    wait_until(lambda: handlers.busy == 1, message="A's order to hold its one thread")
                    second.start()
                    wait_until(lambda: handlers.waiting == 1, message="A's read to wait")
                    assert handlers.busy == 1  # a thread is free, and A may not take it
            finally:
                holder.join(15)
                if second.is_alive() or second.ident:
                    second.join(15)
        assert results["order"].status_code == 201 and results["read"].status_code == 200
    finally:
        locker.close()
        get_database(app).close(timeout=2)


def test_liveness_is_answered_on_the_loop_without_a_thread(database_url, store):
    """The liveness probe starts no thread, neither an API handler thread nor one of the probe lane's:
    it is answered on the event loop (no hand-off, and answered even when every thread is stuck).
    Readiness, which may wait for a connection, does start the probe lane's threads: the observer
    sees threads when there are some."""
    app = held_app(database_url)
    handlers = of_flask(app.app).handlers
    try:
        with app.test_client(headers=AUTH) as client:
            for _ in range(5):
                answer = client.get("/api/health")
                assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
            assert handlers._workers == [] and handlers.probe_lane._workers == []
            assert client.get("/api/health/ready").status_code == 200
            assert len(handlers.probe_lane._workers) == 2 and handlers._workers == []
    finally:
        get_database(app).close(timeout=2)


def test_probes_never_wait_behind_api_work(database_url, store):
    """Every handler thread held (both callers' requests wait on a row lock): liveness and readiness
    answer at once from their own lane; readiness still tells the truth (the database answers)."""
    app = held_app(database_url, caller_share=1.0, admission_timeout=10.0)
    locker = admin_connect(database_url)
    handlers = of_flask(app.app).handlers
    holders: list[threading.Thread] = []
    try:
        with app.test_client(headers=AUTH) as client:
            try:
                with row_locked(locker):
                    order = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
                    holders += [
                        threading.Thread(target=lambda: client.post("/api/orders", json=order)) for _ in range(3)
                    ]
                    for holder in holders:
                        holder.start()
                    wait_until(
                        lambda: handlers.busy == 2 and handlers.waiting == 1, message="both threads held, one waiting"
                    )
                    for path in ("/api/health", "/api/health/ready"):
                        probe = client.get(path)
                        assert probe.status_code == 200, probe.text
                    assert handlers.waiting == 1 and handlers.rejected == 0  # the probes did not queue
                    assert client.get("/api/health/ready").json()["pool"] in ("checked", "busy")
            finally:  # the held requests end before the client does, however the test ends
                for holder in holders:
                    holder.join(15)
    finally:
        locker.close()
        get_database(app).close(timeout=2)
