"""`make bench`: the performance study, end to end, in one run so the ratios hold on a noisy machine.

Starts PostgreSQL (embedded, or BENCH_DATABASE_URL), seeds it, and for each scenario starts a server
under gunicorn (ours through gunicorn.conf.py; the peers with their usual worker classes), drives it
with k6 (checks on status and body) and records throughput and latency. Database round trips are
counted at a TCP proxy; remote databases are emulated by the same proxy adding latency.
Writes bench/results/results.md, results.json and bench.png (git-ignored) and prints the tables.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.config import DURATION, PEER_THREADS, RESULTS, VUS, WORKERS  # noqa: E402
from bench.database import prepare_database, via  # noqa: E402
from bench.drivers import K6, k6  # noqa: E402
from bench.report import chart, render, report_only  # noqa: E402
from bench.scenarios import round_trips, saturation, writes  # noqa: E402
from bench.servers import FASTEST, TUTORIAL, fastest, ours, peer, tutorial  # noqa: E402
from harness.faultproxy import FaultProxy  # noqa: E402


def main() -> int:
    if not K6:
        print("k6 not found: install bench/requirements.txt", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    url, pg, pg_port = prepare_database()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {"workers": WORKERS, "vus": VUS, "duration": DURATION},
    }
    try:
        # 1. Throughput on the same machine, same worker count: ours (pool, none, no-DB) and the peers.
        throughput = {}
        for name, factory, target in [
            ("ours: pool, GET /api/customers/{id}", lambda: ours("ours-pool", url), "customer"),
            ("ours: no DB, GET /api/health", lambda: ours("ours-health", url), "health"),
            (
                "ours: connection per request (DB_POOL_MODE=none)",
                lambda: ours("ours-none", url, DB_POOL_MODE="none"),
                "customer",
            ),
            (
                "peer: Flask + ThreadedConnectionPool, gthread",
                lambda: peer("peer-flask", "flask_gthread", ["-k", "gthread", "--threads", str(PEER_THREADS)], url),
                "customer",
            ),
            (
                "peer: FastAPI + ThreadedConnectionPool, uvicorn",
                lambda: peer("peer-fastapi", "fastapi_pool", ["-k", "uvicorn_worker.UvicornWorker"], url),
                "customer",
            ),
            (TUTORIAL, lambda: tutorial(url), "customer"),
            (FASTEST, lambda: fastest(url), "customer"),
        ]:
            server = factory()
            try:
                throughput[name] = k6(server, target)
            finally:
                server.stop()
            print(f"  {name}: {throughput[name]['rps']:.0f} req/s, p50 {throughput[name]['p50']:.2f} ms", flush=True)
        results["throughput"] = throughput
        if shutil.which("wrk"):
            results["saturation"] = saturation(url)

        # 2. Round trips per request and latency with the database 1, 5 and 25 ms away (one client).
        latency = {}
        for rtt in (0, 1, 5, 25):
            proxy = FaultProxy("127.0.0.1", pg_port).start()
            proxy.delay = rtt / 2000
            proxied = via(url, proxy.port)
            try:
                row = {}
                for mode in ("pool", "none"):

                    def factory(mode=mode, rtt=rtt, proxied=proxied):
                        return ours(f"ours-{mode}-rtt{rtt}", proxied, DB_POOL_MODE=mode)

                    if rtt == 0:
                        row[f"{mode}_round_trips"] = round_trips(factory, proxy)
                    else:
                        server = factory()
                        try:
                            row[mode] = k6(server, "customer", vus=1, duration="6s", warmup="1s")
                        finally:
                            server.stop()
                latency[rtt] = row
            finally:
                proxy.stop()
            if rtt:
                print(
                    f"  RTT {rtt} ms: pool p50 {row['pool']['p50']:.1f} ms, none p50 {row['none']['p50']:.1f} ms",
                    flush=True,
                )
        results["latency"] = latency

        # 3. Overload: 4x the pools' capacity on a database-bound endpoint, short pool timeout.
        # Defaults (4 threads and 4 connections per worker): the excess waits in admission control.
        over_pool, over_timeout = 4, 0.5
        capacity = over_pool * WORKERS
        server = ours("ours-overload", url, DB_POOL_TIMEOUT=over_timeout)
        try:
            results["overload"] = {
                **k6(server, "dashboard", vus=4 * capacity, ACCEPT_503="1"),
                "capacity": capacity,
                "pool_timeout_ms": over_timeout * 1000,
            }
            single = k6(server, "dashboard", vus=1, duration="5s", warmup="1s")
            results["overload"]["service_ms"] = single["p50"]
        finally:
            server.stop()

        # 4. Writes, last: the orders they place are deleted afterwards, but until then they are rows the
        # dashboard aggregates (the overload row above would measure a bigger query).
        if shutil.which("wrk"):
            results["writes"] = writes(url)
    finally:
        if pg is not None:
            pg.destroy()
    results["elapsed_s"] = round(time.time() - started)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (RESULTS / "results.md").write_text(report)
    chart(results)
    print(report)
    print(f"written: {RESULTS / 'results.md'}, {RESULTS / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(report_only() if "--report" in sys.argv else main())
