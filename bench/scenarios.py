"""The scenarios beyond the k6 table: saturation and the tail at many connections, order writes, and
round trips per request counted at a TCP proxy."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.config import CUSTOMERS, PEER_THREADS, TOKEN  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import FASTEST, TUTORIAL, fastest, ours, peer, tutorial  # noqa: E402
from harness.faultproxy import FaultProxy  # noqa: E402

TAIL_RUNS = int(os.environ.get("BENCH_TAIL_RUNS", "3"))
CONNECTIONS = (32, 128, 512)


def saturation(url: str) -> dict:
    """wrk at 32, 128 and 512 connections on each server: p50, p99, p99/p50, worker CPU per request, and
    how connections and requests spread over the workers.
    Ours on the database endpoint runs TAIL_RUNS times (the tail varies from run to run)."""
    rows = {}
    for name, factory, path, runs in [
        ("ours: GET /api/customers/{id} (random ids)", lambda: ours("sat-ours", url), None, TAIL_RUNS),
        ("ours: no DB, GET /api/health", lambda: ours("sat-health", url), "/api/health", 1),
        (
            "peer: Flask + ThreadedConnectionPool, gthread",
            lambda: peer("sat-flask", "flask_gthread", ["-k", "gthread", "--threads", str(PEER_THREADS)], url),
            None,
            1,
        ),
        (TUTORIAL, lambda: tutorial(url), None, 1),
        (FASTEST, lambda: fastest(url), None, 1),
        (FASTEST + ", no DB", lambda: fastest(url), "/api/health", 1),
    ]:
        server = factory()
        try:
            rows[name] = [
                wrk(server, path or "/", connections=c, script=None if path else "random_customer.lua")
                for _ in range(runs)
                for c in CONNECTIONS
            ]
        finally:
            server.stop()
        print(
            f"  {name}: " + ", ".join(f"c={r['connections']} p99/p50 {r['tail']:.1f}" for r in rows[name]), flush=True
        )
    return rows


WRITES = (
    ("ours: POST /api/orders", lambda url: ours("write-ours", url)),
    (FASTEST, fastest),
    (TUTORIAL, tutorial),
)


def restock(url: str) -> None:
    """Every product back to a large stock, so that no order of the write rows is refused for stock."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE products SET stock = 1000000")
    conn.close()


def writes(url: str) -> dict:
    """wrk at 32 connections posting orders (bench/wrk/new_order.lua: one transaction each) to ours and
    to the peers that do the same transaction: throughput, latency, worker CPU per request."""
    rows = {}
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM orders")
        last = cur.fetchone()[0]
    try:
        for name, factory in WRITES:
            restock(url)
            server = factory(url)
            try:
                rows[name] = wrk(server, "/", connections=32, script="new_order.lua")
            finally:
                server.stop()
            row = rows[name]
            print(f"  write, {name}: {row['rps']:.0f} req/s, {row['cpu_ms_per_request']:.2f} ms CPU/req", flush=True)
    finally:
        # The database as it was (a BENCH_DATABASE_URL is measured again next time): the orders placed
        # here deleted (their lines with them). Stock stays at what restock() set.
        with conn.cursor() as cur:
            cur.execute("DELETE FROM orders WHERE id > %s", (last,))
            cur.execute("VACUUM ANALYZE orders")
            cur.execute("VACUUM ANALYZE order_lines")
        conn.close()
    return rows


def _authorized(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})


def round_trips(server_factory, proxy: FaultProxy, requests: int = 200) -> float:
    """Database round trips per request, counted at the proxy, after a warm-up."""
    server = server_factory()
    try:
        for _ in range(20):
            urllib.request.urlopen(_authorized(f"{server.base}/api/customers/1"), timeout=5).read()
        before = proxy.round_trips
        for i in range(requests):
            urllib.request.urlopen(_authorized(f"{server.base}/api/customers/{1 + i % CUSTOMERS}"), timeout=5).read()
        return (proxy.round_trips - before) / requests
    finally:
        server.stop()
