"""`make bench-compare REF=<commit>`: this tree against an earlier commit, alternating, on one database.

For each of PAIRS rounds (3), the earlier commit (checked out in a temporary git worktree) and this tree
are started in turn under gunicorn.conf.py and measured the same way: wrk at 32 connections on the
database endpoint (random ids) and on /api/health, and k6 on /api/health; each with worker CPU per
request. Alternating keeps the VM's drift out of the comparison. Loopback only; stops by itself.

BENCH_COMPARE_CONNECTIONS (say `32,128,512`) runs the two wrk rows at each of those connection counts,
with the tail (p99/p50) and the spread over the workers (the larger of the connections' and the
requests' deviation from even, %) of each.

BENCH_COMPARE_ORDERS=1 adds POST /api/orders at 32 connections (wrk, new_order.lua), and gives each
tree a database of its own, upgraded and seeded by that tree's code (a write pays for the schema it
writes to: its indexes and triggers), with stock enough for every order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers  # noqa: E402
from bench.database import prepare_database  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import Server, base_env  # noqa: E402
from swagger_server.db.embedded import free_port  # noqa: E402

PAIRS = int(os.environ.get("BENCH_PAIRS", "3"))
CONNECTIONS = [int(c) for c in os.environ.get("BENCH_COMPARE_CONNECTIONS", "32").split(",")]
ORDERS = os.environ.get("BENCH_COMPARE_ORDERS") == "1"


def own_database(url: str, label: str, tree: Path) -> str:
    """A database for `tree` alone, beside `url`'s: its own schema and demo data, unlimited stock."""
    import psycopg2

    head, _ = url.rsplit("/", 1)
    name = "bench_" + "".join(ch if ch.isalnum() else "_" for ch in label)
    admin = psycopg2.connect(f"{head}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    own = f"{head}/{name}"
    env = {**os.environ, "PYTHONPATH": str(tree), "DATABASE_URL": own, "APP_CONFIG": str(ROOT / "tests" / "empty.ini")}
    for step in (["db", "upgrade"], ["db", "seed", "--customers", "10000", "--orders", "20000", "--quiet"]):
        subprocess.run([sys.executable, "-m", "swagger_server", *step], cwd=tree, env=env, check=True)
    conn = psycopg2.connect(own)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE products SET stock = 100000000")
    conn.close()
    return own


def start(label: str, tree: Path, url: str) -> Server:
    """Ours from `tree` (its own gunicorn.conf.py and code), on the shared database."""
    port = free_port()
    env = {**base_env(url, port), "PYTHONPATH": str(tree)}
    args = ["-c", "gunicorn.conf.py", "--log-level", "warning", "wsgi:app"]
    return Server(f"compare-{label}", args, env, port, cwd=tree)


def measure(server: Server) -> dict:
    row = {}
    for c in CONNECTIONS:
        at = "" if CONNECTIONS == [32] else f"@{c}"
        db = wrk(server, "/", connections=c, seconds=8, script="random_customer.lua")
        nodb = wrk(server, "/api/health", connections=c, seconds=8)
        row |= {f"db_rps{at}": db["rps"], f"db_cpu{at}": db["cpu_ms_per_request"], f"db_tail{at}": db["tail"]}
        row |= {f"nodb_rps{at}": nodb["rps"], f"nodb_cpu{at}": nodb["cpu_ms_per_request"]}
        if at:
            row |= {
                f"nodb_tail{at}": nodb["tail"],
                f"db_off_even{at}": off_even(db),
                f"nodb_off_even{at}": off_even(nodb),
            }
    if ORDERS:
        placed = wrk(server, "/", connections=32, seconds=8, script="new_order.lua")
        row |= {"orders_rps": placed["rps"], "orders_cpu": placed["cpu_ms_per_request"]}
    k6 = drivers.k6(server, "health", duration="8s", warmup="2s")
    return row | {"nodb_k6_cpu": k6["cpu_ms_per_request"]}


def off_even(run: dict) -> float:
    """The larger of the run's connections' and requests' deviation from even over the workers, in %."""
    spread = run.get("spread") or {}
    return max(spread.get("connections_off_even", 0.0), spread.get("requests_off_even", 0.0))


def main(ref: str) -> int:
    url, pg, _ = prepare_database()
    worktree = Path(tempfile.mkdtemp(prefix="bench-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), ref], cwd=ROOT, check=True)
    rows: dict[str, list[dict]] = {ref: [], "this tree": []}
    try:
        urls = {
            label: own_database(url, label, tree) if ORDERS else url
            for label, tree in ((ref, worktree), ("this tree", ROOT))
        }
        for i in range(PAIRS):
            for label, tree in ((ref, worktree), ("this tree", ROOT)):
                server = start(label.replace(" ", "-"), tree, urls[label])
                try:
                    rows[label].append(measure(server))
                finally:
                    server.stop()
                r = rows[label][-1]
                print(f"  round {i + 1}, {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
        if pg is not None:
            pg.destroy()
    keys = list(rows["this tree"][0])
    print(f"\n| mean of {PAIRS} | {ref} | this tree |")
    print("|---|---:|---:|")
    for key in keys:
        means = [sum(r[key] for r in runs) / len(runs) for runs in rows.values()]
        print(f"| {key} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: bench/compare.py <git ref>", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
