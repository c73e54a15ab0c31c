"""`make bench-compare REF=<commit>`: this tree against an earlier commit, alternating, on one database.

For each of PAIRS rounds (3), the earlier commit (checked out in a temporary git worktree) and this tree
are started in turn under gunicorn.conf.py and measured the same way: wrk at 32 connections on the
database endpoint (random ids) and on /api/health, and k6 on /api/health; each with worker CPU per
request. Alternating keeps the VM's drift out of the comparison. Loopback only; stops by itself.
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


def start(label: str, tree: Path, url: str) -> Server:
    """Ours from `tree` (its own gunicorn.conf.py and code), on the shared database."""
    port = free_port()
    env = {**base_env(url, port), "PYTHONPATH": str(tree)}
    args = ["-c", "gunicorn.conf.py", "--log-level", "warning", "wsgi:app"]
    return Server(f"compare-{label}", args, env, port, cwd=tree)


def measure(server: Server) -> dict:
    db = wrk(server, "/", connections=32, seconds=8, script="random_customer.lua")
    nodb = wrk(server, "/api/health", connections=32, seconds=8)
    k6 = drivers.k6(server, "health", duration="8s", warmup="2s")
    return {
        "db_rps": db["rps"],
        "db_cpu": db["cpu_ms_per_request"],
        "db_tail": db["tail"],
        "nodb_rps": nodb["rps"],
        "nodb_cpu": nodb["cpu_ms_per_request"],
        "nodb_k6_cpu": k6["cpu_ms_per_request"],
    }


def main(ref: str) -> int:
    url, pg, _ = prepare_database()
    worktree = Path(tempfile.mkdtemp(prefix="bench-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), ref], cwd=ROOT, check=True)
    rows: dict[str, list[dict]] = {ref: [], "this tree": []}
    try:
        for i in range(PAIRS):
            for label, tree in ((ref, worktree), ("this tree", ROOT)):
                server = start(label.replace(" ", "-"), tree, url)
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
    print(f"\n| mean of {PAIRS} | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for label, runs in rows.items():
        print(f"| {label} | " + " | ".join(f"{sum(r[k] for r in runs) / len(runs):.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: bench/compare.py <git ref>", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
