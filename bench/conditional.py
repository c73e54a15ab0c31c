"""What a conditional re-read costs: GET /api/products/{id} and a page of 100 products answered 200 with
their bodies, against the same reads with a matching If-None-Match answered 304 (no body). Loopback only, stops by itself (about a
minute). Worker CPU per request and req/s, from wrk at 32 connections, alternating the two, RUNS times.

    .venv/bin/python bench/conditional.py        # make bench-conditional
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.database import prepare_database  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import ours  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PATHS = ("/api/products/7", "/api/products?limit=100")


def main() -> int:
    url, pg, _ = prepare_database(embedded=True)
    server = ours("conditional", url)
    rows: dict[str, list[dict]] = {}
    try:
        for path in PATHS:
            with urllib.request.urlopen(f"{server.base}{path}") as response:
                etag, size = response.headers["ETag"], len(response.read())
            for _ in range(RUNS):
                rows.setdefault(f"{path} 200 ({size} B)", []).append(wrk(server, path, seconds=8))
                rows.setdefault(f"{path} 304 (0 B)", []).append(
                    wrk(server, path, seconds=8, headers=[f"If-None-Match: {etag}"])
                )
    finally:
        server.stop()
        if pg is not None:
            pg.destroy()
    summary = {
        name: {
            "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in runs), 3),
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50"] for r in runs),
        }
        for name, runs in rows.items()
    }
    print(json.dumps(summary, indent=2))
    names = list(summary)
    for full, conditional in zip(names[::2], names[1::2], strict=True):
        ratio = summary[conditional]["cpu_ms_per_request"] / summary[full]["cpu_ms_per_request"]
        print(f"{conditional}: {ratio:.2f}x the worker CPU of {full} ({RUNS} alternating runs, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
