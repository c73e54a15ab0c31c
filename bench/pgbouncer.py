"""`make bench-pgbouncer`: more app connections than PostgreSQL has slots, through PgBouncer.

PostgreSQL with max_connections = 30. Scenario 1: 2 workers x 4 connections straight to it (what
fits). Scenario 2: 8 workers x 10 connections = 80 app connections into PgBouncer (transaction mode,
server pool of 10). Both under the realistic mix (bench/k6/mix.js, 80 VUs). Counts PostgreSQL's
client backends every 50 ms and the "too many connections" errors in the server logs. Loopback only;
about 2 minutes. Needs Debian's pgbouncer. Writes bench/results/pgbouncer.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.config import RESULTS  # noqa: E402
from bench.database import prepare_database  # noqa: E402
from bench.replica import mix  # noqa: E402
from bench.servers import ours  # noqa: E402
from harness.pgbouncer import BINARY, PgBouncer  # noqa: E402

VUS = int(os.environ.get("BENCH_VUS", "80"))


class BackendCounter(threading.Thread):
    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()"
                )
                self.peak = max(self.peak, cur.fetchone()[0])


def main() -> int:
    if BINARY is None:
        print("pgbouncer is not installed (apt-get install pgbouncer)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    url, pg, _ = prepare_database(max_connections=30, embedded=True)
    bouncer = None
    results: dict = {"max_connections": 30, "vus": VUS}
    try:
        bouncer = PgBouncer(work / "bouncer", pg.port, pool_size=10).start()
        scenarios = [
            ("direct: 2 workers x 4", url, {"WEB_CONCURRENCY": 2, "WEB_THREADS": 4, "DB_POOL_MAX_CONNECTIONS": 4}),
            (
                "PgBouncer: 8 workers x 10",
                bouncer.url("bench"),
                {
                    "WEB_CONCURRENCY": 8,
                    "WEB_THREADS": 10,
                    "DB_POOL_MAX_CONNECTIONS": 10,
                    "DB_POOL_MIN_CONNECTIONS": 10,
                    "DB_PGBOUNCER_MAX_CLIENT_CONN": 400,
                },
            ),
        ]
        for name, target, extra in scenarios:
            server = ours(name.split(":")[0].lower(), target, **extra)
            counter = BackendCounter(url)
            try:
                mix(server, duration="3s", vus=VUS)
                counter.start()
                results[name] = mix(server, vus=VUS)
            finally:
                counter.stop.set()
                counter.join()
                server.stop()
            log = Path(server.log.name).read_text()
            results[name]["peak_server_connections"] = counter.peak
            results[name]["too_many_connections_errors"] = log.lower().count("too many")
    finally:
        if bouncer is not None:
            bouncer.stop()
        pg.destroy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pgbouncer.json").write_text(json.dumps(results, indent=2))
    print(f"bench/k6/mix.js, {VUS} VUs, PostgreSQL max_connections 30, PgBouncer server pool 10\n")
    print(
        "| setup | app connections | req/s | p50 ms | p95 ms | p99 ms | failed | peak PostgreSQL backends |"
        " 'too many connections' |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, app_conns in (("direct: 2 workers x 4", 8), ("PgBouncer: 8 workers x 10", 80)):
        r = results[name]
        print(
            f"| {name} | {app_conns} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
            f"{100 * r['failed_rate']:.2f}% | {r['peak_server_connections']} | {r['too_many_connections_errors']} |"
        )
    return 0 if all(results[n]["failed_rate"] < 0.01 for n, _, _ in scenarios) else 1


if __name__ == "__main__":
    sys.exit(main())
