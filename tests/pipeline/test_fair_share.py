"""No caller takes the service from the others, over real gunicorn: one read token floods the dashboard
from 40 connections (a process of its own, so its threads do not share the test's GIL) while the
probes and another token are measured. Liveness answers within 100 ms (p99), readiness stays true,
the other token's reads within 500 ms (p99), and the flood gets no 5xx but 503 overloaded (documented)
and, past the admission wait, 429 too-many-concurrent."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import pytest

from swagger_server.db.migrate import upgrade
from tests.support.auth import TOKEN
from tests.support.database import seed_demo
from tests.support.servers import Gunicorn

FLOOD_TOKEN = "flood-token"
FLOOD = """
import http.client, json, sys, threading, time
host, port, token, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
path = "/api/dashboard?from=2017-01-02&to=2026-12-03&top=50"
statuses, took, lock, end = {}, [], threading.Lock(), time.monotonic() + seconds
def flood():
    conn = None
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            conn = conn or http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", path, headers={"Authorization": "Bearer " + token})
            response = conn.getresponse()
            response.read()
            key = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            conn, key = None, type(exc).__name__
        with lock:
            statuses[key] = statuses.get(key, 0) + 1
            took.append(time.monotonic() - start)
threads = [threading.Thread(target=flood) for _ in range(40)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"statuses": statuses, "median": sorted(took)[len(took) // 2]}))
"""


def timed_get(conn: http.client.HTTPConnection, path: str, token: str | None = None) -> tuple[int, float, dict]:
    start = time.monotonic()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = conn.getresponse()
    body = response.read()
    return response.status, time.monotonic() - start, json.loads(body) if body else {}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# The bounds: liveness p99 <= 100 ms (idle: ~2 ms; the lane has threads of its own, so what is
# left is the event loop's turn among 40 flooding connections), the other token's read p99 <= 500 ms
# (idle ~5 ms; it waits for no thread, only for a database busy with the flood's reports).
@pytest.mark.timing
@pytest.mark.slow
def test_one_tokens_dashboard_flood_leaves_the_probes_and_other_callers_served(new_database):
    url = new_database("store_fair_share")
    upgrade(url)
    # 20 000 customers (200 000 orders): with the rollups a ten-year report costs what its customer
    # figures cost, so the store must be this large for the flood to saturate a worker (the check
    # below); `db seed` makes it in seconds.
    seed_demo(url, int(os.environ.get("FAIR_SHARE_CUSTOMERS", "20000")))
    server = Gunicorn(url, API_TOKENS=f"read:{FLOOD_TOKEN},{TOKEN}")
    flood = None
    try:
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, "127.0.0.1", str(server.port), FLOOD_TOKEN, "14"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)  # every thread held and the line full before measuring
        live, ready, reads = [], [], []
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        end = time.monotonic() + 9
        i = 0
        while time.monotonic() < end:
            probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # as a kubelet: new each time
            status, seconds, _ = timed_get(probe, "/api/health")
            probe.close()
            live.append((status, seconds))
            if i % 3 == 0:
                probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                status, seconds, body = timed_get(probe, "/api/health/ready")
                probe.close()
                ready.append((status, seconds, body.get("status")))
            status, seconds, body = timed_get(other, f"/api/customers/{i % 1000 + 1}", TOKEN)
            reads.append((status, seconds))
            i += 1
            time.sleep(0.05)  # pacing: the other caller's steady 20 reads a second
        other.close()
        out, _ = flood.communicate(timeout=60)
        result = json.loads(out)
        statuses, flood_median = result["statuses"], result["median"]
        live_p99, read_p99 = p99([s for _, s in live]), p99([s for _, s in reads])
        print(
            f"flood {statuses} median {flood_median:.2f} s; liveness n={len(live)} p99 {live_p99 * 1000:.1f} ms; readiness n={len(ready)}"
            f" max {max(s for _, s, _ in ready) * 1000:.1f} ms; other token n={len(reads)} p99 {read_p99 * 1000:.1f} ms"
        )
        # The observer would have seen a flood: the worker was saturated (each report waited its turn
        # for a thread: ~0.1 s of work, well over a second in line), while the others were not.
        assert statuses.get("200", 0) > 20 and flood_median >= 0.5, (statuses, flood_median)
        assert set(statuses) <= {"200", "429", "503"}, statuses  # 503 overloaded is documented; no other 5xx
        assert {s for s, _ in live} == {200} and live_p99 <= 0.100, (live_p99, len(live))
        assert {(s, body) for s, _, body in ready} == {(200, "ready")}, ready
        assert {s for s, _ in reads} == {200} and read_p99 <= 0.500, (read_p99, len(reads))
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        server.stop()
