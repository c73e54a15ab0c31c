"""What the rate limit costs: GET /api/customers/{id} (a token, validation, one query) with no limit,
with a limit counted in each worker's memory, and with one counted in Redis (a real redis-server on
loopback). wrk speaks as 1000 callers (a token each, bench/wrk/many_callers.lua), each well under the
limit (600/minute), so every request is counted and none refused: what is measured is the counting
(two storage calls a request) and the two answer fields. Worker CPU
per request and req/s from wrk at 32 connections, the three alternated RUNS times. Loopback only,
stops by itself (about two minutes).

    .venv/bin/python bench/ratelimit.py        # make bench-ratelimit
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.database import prepare_database  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import ours  # noqa: E402
from harness.redis import Redis  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PATH = "/api/customers/42"
CALLERS = 1000  # bench/wrk/many_callers.lua: each request from one of them, ~0.7 a second each
LIMIT = "600/minute"  # the compose file's: never reached by one of these callers (~42 a minute)
TOKENS = ",".join(f"bench-caller-{n}" for n in range(1, CALLERS + 1))


def main() -> int:
    redis = Redis(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start()
    url, pg, _ = prepare_database(embedded=True)
    variants = {
        "no limit": {},
        # The same server again: how far two identical servers measure apart in this run (the noise).
        "no limit, again": {},
        "limit, memory://": {"API_RATE_LIMIT": LIMIT, "API_RATE_LIMIT_STORAGE": "memory://"},
        "limit, redis://": {"API_RATE_LIMIT": LIMIT, "API_RATE_LIMIT_STORAGE": redis.url},
    }
    servers = {}
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for i, (name, env) in enumerate(variants.items()):
            servers[name] = ours(f"ratelimit-{i}", url, API_TOKENS=TOKENS, **env)
        for _ in range(RUNS):
            for name, server in servers.items():
                rows[name].append(wrk(server, PATH, seconds=8, script="many_callers.lua"))
    finally:
        for server in servers.values():
            server.stop()
        redis.stop()
        if pg is not None:
            pg.destroy()
    summary = {
        name: {
            "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in runs), 3),
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50"] for r in runs),
            "p99_ms": statistics.median(r["p99"] for r in runs),
        }
        for name, runs in rows.items()
    }
    print(json.dumps(summary, indent=2))
    base = summary["no limit"]["cpu_ms_per_request"]
    for name, row in summary.items():
        print(
            f"{name}: {row['cpu_ms_per_request']:.3f} ms CPU/request, {row['cpu_ms_per_request'] / base:.2f}x no limit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
