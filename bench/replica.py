"""`make bench-replica`: the realistic mix (bench/k6/mix.js) with and without a streaming replica.

Starts an embedded primary (seeded as `make bench` does), makes a hot standby of it with
pg_basebackup, and runs our gunicorn twice: reads to the primary only, then read-only operations to
the replica. Samples the replica's replay lag (bytes and seconds) while the mix writes. Loopback
only; stops by itself (about 2 minutes). Prints a Markdown table and writes bench/results/replica.json.
On one machine both servers share the same cores: this measures the routing's cost and the lag,
not the capacity a replica on its own host adds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.config import CUSTOMERS, RESULTS  # noqa: E402
from bench.database import prepare_database  # noqa: E402
from bench.drivers import K6  # noqa: E402
from bench.servers import ours  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "20s")
VUS = int(os.environ.get("BENCH_VUS", "16"))


def mix(server, duration: str = DURATION, vus: int = VUS) -> dict:
    """Run bench/k6/mix.js; return req/s, latency, failed rate and whether the thresholds held."""
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {
        **os.environ,
        "BASE_URL": server.base,
        "TOKEN": "bench-token",
        "VUS": str(vus),
        "DURATION": duration,
        "MAX_CUSTOMER": str(CUSTOMERS),
        "MAX_PRODUCT": "1000",
        "P95_MS": "1000",
    }
    done = subprocess.run(
        [K6, "run", "--quiet", f"--summary-export={summary}", str(ROOT / "bench/k6/mix.js")],
        env=env,
        capture_output=True,
        text=True,
    )
    metrics = json.loads(summary.read_text())["metrics"]
    summary.unlink()
    if done.returncode not in (0, 99):
        raise RuntimeError(done.stderr[-2000:])
    d = metrics["http_req_duration"]
    return {
        "rps": metrics["http_reqs"]["rate"],
        "requests": metrics["http_reqs"]["count"],
        "p50": d["med"],
        "p95": d["p(95)"],
        "p99": d["p(99)"],
        "failed_rate": metrics["http_req_failed"]["value"],
        "checks_rate": metrics["checks"]["value"],
        "thresholds_ok": done.returncode == 0,
    }


class LagSampler(threading.Thread):
    """Replay lag every 0.2 s: bytes of WAL not yet replayed, and the age of the last replayed commit."""

    def __init__(self, primary_url: str, replica_url: str):
        super().__init__(daemon=True)
        self.primary, self.replica = psycopg2.connect(primary_url), psycopg2.connect(replica_url)
        self.primary.autocommit = self.replica.autocommit = True
        self.samples: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.2):
            with self.primary.cursor() as p, self.replica.cursor() as r:
                p.execute("SELECT pg_current_wal_lsn()::text")
                lsn = p.fetchone()[0]
                r.execute(
                    "SELECT pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn()),"
                    " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                    " ELSE EXTRACT(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END",
                    (lsn,),
                )
                behind, seconds = r.fetchone()
                self.samples.append((max(0, int(behind)), float(seconds or 0)))

    def summary(self) -> dict:
        behind = sorted(b for b, _ in self.samples)
        seconds = sorted(s for _, s in self.samples)
        return {
            "samples": len(self.samples),
            "max_bytes": behind[-1],
            "p50_bytes": behind[len(behind) // 2],
            "max_seconds": round(seconds[-1], 3),
            "p50_seconds": round(seconds[len(seconds) // 2], 4),
        }


def transactions(url: str) -> int:
    """Transactions the server has run in this database (each statement in autocommit is one)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def main() -> int:
    url, pg, _ = prepare_database()
    if pg is None:
        print("bench/replica.py needs the embedded PostgreSQL (unset BENCH_DATABASE_URL)", file=sys.stderr)
        return 2
    replica = pg.make_replica(Path(tempfile.mkdtemp(prefix="bench-replica-")) / "data")
    replica.start()
    replica_url = replica.url("bench")
    results = {"vus": VUS, "duration": DURATION}
    try:
        for name, extra in [("primary only", {}), ("with replica", {"DATABASE_REPLICA_URL": replica_url})]:
            server = ours(name.replace(" ", "-"), url, **extra)
            sampler = LagSampler(url, replica_url)
            try:
                mix(server, duration="3s")  # warm-up
                sampler.start()
                before = transactions(url), transactions(replica_url)
                results[name] = mix(server)
                time.sleep(0.6)  # pg_stat_database is flushed about every 0.5 s
                after = transactions(url), transactions(replica_url)
                results[name]["transactions"] = {"primary": after[0] - before[0], "replica": after[1] - before[1]}
            finally:
                sampler.stop.set()
                sampler.join()
                server.stop()
            results[name]["lag"] = sampler.summary()
    finally:
        replica.destroy()
        pg.destroy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replica.json").write_text(json.dumps(results, indent=2))
    print(f"bench/k6/mix.js, {VUS} VUs, {DURATION}, 2 workers, primary and replica on this machine\n")
    print(
        "| setup | req/s | p50 ms | p95 ms | p99 ms | failed | thresholds | transactions on primary / replica"
        " | replica behind (max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("primary only", "with replica"):
        r = results[name]
        print(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
            f"{100 * r['failed_rate']:.2f}% | {'pass' if r['thresholds_ok'] else 'FAIL'} | "
            f"{r['transactions']['primary']} / {r['transactions']['replica']} | "
            f"{r['lag']['max_bytes']} B, {r['lag']['max_seconds']} s |"
        )
    return 0 if all(results[n]["thresholds_ok"] for n in ("primary only", "with replica")) else 1


if __name__ == "__main__":
    sys.exit(main())
