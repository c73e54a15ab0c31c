"""Connections spread across gunicorn's workers (swagger_server/serving/acceptor.py), seen from outside: which
worker process holds each accepted connection (psutil, the kernel's view), on raw sockets."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from harness.waiting import wait_until
from tests.support.rawhttp import Connection, request_bytes
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.slow

CONNECTIONS = 32
PROBE = request_bytes("GET", "/api/health")


@pytest.fixture(scope="module")
def server(database_url):
    server = Gunicorn(database_url, WEB_CONCURRENCY="2")
    # Both workers accepting (the harness waits for the first answer; the second may still be starting).
    wait_until(lambda: server.output().count("Application startup complete") == 2, timeout=20)
    yield server
    server.stop()


@pytest.fixture
def conns(server):
    """The test's client connections, closed after it however it ends, and gone from the workers
    before the next test: each worker counts the connections it holds (the share), and one still
    counting the last test's skewed the next burst (12 and 20 of 32, one run in ten or so)."""
    opened: list[Connection] = []
    yield opened
    ports = set()
    for conn in opened:
        if isinstance(conn, int):
            ports.add(conn)
            continue
        try:
            ports.add(conn.sock.getsockname()[1])
        except OSError:  # closed by the test already
            pass
        conn.close()
    wait_until(
        lambda: not any(still_held(server, pid, ports) for pid in server.workers),
        timeout=10,
        message="the workers to close the test's connections",
    )


def still_held(server, pid: int, ports: set[int]) -> bool:
    """Whether worker `pid` still has a socket of one of these client ports (in any state)."""
    return any(
        k.laddr and k.laddr.port == server.port and k.raddr and k.raddr.port in ports
        for k in psutil.Process(pid).net_connections("tcp")
    )


def held_by_worker(server, conns) -> dict[int, int]:
    """Established connections to the server from these client sockets (or their local ports), by the
    worker holding each."""
    ours = {c if isinstance(c, int) else c.sock.getsockname()[1] for c in conns}
    held = {}
    for pid in server.workers:
        held[pid] = sum(
            1
            for k in psutil.Process(pid).net_connections("tcp")
            if k.status == psutil.CONN_ESTABLISHED and k.laddr.port == server.port and k.raddr and k.raddr.port in ours
        )
    return held


def answered(conn: Connection) -> None:
    answer = conn.read_answer()
    assert answer is not None and answer.status == 200, answer


def open_and_answer(server) -> Connection:
    """A new connection, with one probe answered on it (so a worker has accepted it)."""
    conn = Connection(server.port)
    conn.send(PROBE)
    answered(conn)
    return conn


def within_a_fifth_of_even(held: dict[int, int], total: int) -> bool:
    even = total / len(held)
    return sum(held.values()) == total and all(abs(n - even) <= 0.2 * even for n in held.values())


def test_connections_opened_one_after_another_alternate(server, conns):
    """Each connection opened once the last was answered: both workers idle, and without the share the
    one that answered last (still on its core) tends to take the next as well."""
    conns += [open_and_answer(server) for _ in range(CONNECTIONS)]
    held = held_by_worker(server, conns)
    assert within_a_fifth_of_even(held, CONNECTIONS), held


def test_a_burst_of_connections_spreads(server, conns):
    """32 connections opened at once, as a load generator or a client's pool does."""
    conns += [Connection(server.port) for _ in range(CONNECTIONS)]
    for conn in conns:
        conn.send(PROBE)
    for conn in conns:
        answered(conn)
    held = held_by_worker(server, conns)
    assert within_a_fifth_of_even(held, CONNECTIONS), held


def test_a_stopped_worker_delays_no_connection_and_then_gets_the_new_ones(server, conns):
    """A worker that cannot accept (stopped here, as one stuck in a long call would be) holds fewer
    connections, so the other is over its share: it leaves each new connection to the stopped one, which
    never looks, so it takes it after MAX_DEFER_SECONDS (0.2 s). Every connection is answered within
    1 s: five times that wait, against an answer's few ms here; waiting on the stopped worker would
    take until its SIGCONT. Once it runs again, it is the one with fewer, so it gets the new
    connections until the two are even (then they take turns): of all 32, each holds within a fifth of
    even, which takes at least 13 of the 24 new ones (without the share it got a third or less)."""
    stopped, running = server.workers
    os.kill(stopped, signal.SIGSTOP)
    try:
        slowest = 0.0
        for _ in range(8):
            started = time.monotonic()
            conns.append(open_and_answer(server))
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, slowest
        assert held_by_worker(server, conns) == {stopped: 0, running: 8}
    finally:
        os.kill(stopped, signal.SIGCONT)
    conns += [open_and_answer(server) for _ in range(24)]
    held = held_by_worker(server, conns)
    assert within_a_fifth_of_even(held, 32), held


def test_closed_connections_no_longer_count(server, conns):
    """Ten connections to one worker (the other stopped), all closed: the two are even again, so 24 new
    ones split within a fifth of even. Had the closed ten still counted, the other would take the first
    ten or so of them and the split would be 17 to 7."""
    stopped, running = server.workers
    os.kill(stopped, signal.SIGSTOP)
    try:
        first = [open_and_answer(server) for _ in range(10)]
        assert held_by_worker(server, first) == {stopped: 0, running: 10}
        ports = [conn.sock.getsockname()[1] for conn in first]
        for conn in first:
            conn.close()
        wait_until(lambda: held_by_worker(server, ports)[running] == 0, timeout=5, message="the ten closed")
    finally:
        os.kill(stopped, signal.SIGCONT)
    conns += [open_and_answer(server) for _ in range(24)]
    held = held_by_worker(server, conns)
    assert within_a_fifth_of_even(held, 24), held


def test_the_kernel_view_sees_a_connection(server, conns):
    """The observer of the tests above can see: a connection held open is counted at its worker."""
    conns.append(open_and_answer(server))
    held = held_by_worker(server, conns)
    assert sorted(held.values()) == [0, 1], held
