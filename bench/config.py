"""The study's knobs, one place for all of bench/: where results go, the sizes, the durations (each
overridable by a BENCH_* variable)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
VUS = int(os.environ.get("BENCH_VUS", "32"))
TOKEN = "bench-token"  # every request but /api/health needs it: ours, FastAPI's and the tutorial peer check it
CUSTOMERS = 10_000
PEER_THREADS = 10  # the peers' usual setting: 10 threads and a pool of 10 per worker
