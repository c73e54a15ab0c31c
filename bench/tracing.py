"""What tracing costs: GET /api/customers/{id} (a token, validation, one query) with tracing off, and on
with every request sampled and with one in ten, the spans exported over OTLP/HTTP to a receiver in this
process that accepts and drops them. Worker CPU per request and req/s from wrk at 32 connections, the
three alternated RUNS times. Loopback only, stops by itself (about two minutes).

    .venv/bin/python bench/tracing.py        # make bench-tracing
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.database import prepare_database  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import ours  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PATH = "/api/customers/42"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that reads each export and answers 200 (an empty response message)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> int:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    url, pg, _ = prepare_database(embedded=True)
    variants = {
        "tracing off": {},
        "tracing on, 100 % sampled": {"OTEL_TRACES_SAMPLER": "always_on"},
        "tracing on, 10 % sampled": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    }
    servers = {}
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for name, env in variants.items():
            if env:
                env = {**env, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
            servers[name] = ours(name.split(",")[0].replace(" ", "-") + str(len(servers)), url, **env)
        for _ in range(RUNS):
            for name, server in servers.items():
                rows[name].append(wrk(server, PATH, seconds=8))
    finally:
        for server in servers.values():
            server.stop()
        sink.shutdown()
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
    base = summary["tracing off"]["cpu_ms_per_request"]
    for name, row in summary.items():
        print(f"{name}: {row['cpu_ms_per_request']:.3f} ms CPU/request, {row['cpu_ms_per_request'] / base:.2f}x off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
