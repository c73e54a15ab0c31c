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
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import psycopg2  # noqa: E402

from harness import gunicorn  # noqa: E402
from harness.faultproxy import FaultProxy  # noqa: E402
from swagger_server.db.embedded import EmbeddedPostgres, free_port  # noqa: E402
from swagger_server.db.migrate import upgrade  # noqa: E402
from swagger_server.db.seed import seed  # noqa: E402

RESULTS = ROOT / "bench" / "results"
K6 = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
VUS = int(os.environ.get("BENCH_VUS", "32"))
TOKEN = "bench-token"  # every request but /api/health needs it: ours, FastAPI's and the tutorial peer check it
CUSTOMERS = 10_000
PEER_THREADS = 10  # the peers' usual setting: 10 threads and a pool of 10 per worker


# -- servers ---------------------------------------------------------------------------------------
class Server:
    """One gunicorn with its own environment; output drained to a log file."""

    def __init__(self, name: str, args: list[str], env: dict, port: int, cwd: Path = ROOT):
        self.name, self.port = name, port
        self.base = f"http://127.0.0.1:{port}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log = open(RESULTS / f"{name}.log", "w")
        self.process = gunicorn.start(args, env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            if not gunicorn.wait_serving(self.base, self.process, timeout=30):
                raise RuntimeError(f"{name} exited; see {self.log.name}")
        except TimeoutError:
            gunicorn.stop(self.process)
            raise RuntimeError(f"{name} did not start; see {self.log.name}") from None
        time.sleep(0.5)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.workers())

    def stop(self) -> None:
        gunicorn.stop(self.process)
        self.log.close()


def base_env(database_url: str, port: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "API_", "WEB_", "CORS_", "APP_"))}
    env.update(
        {
            "APP_CONFIG": str(ROOT / "tests" / "empty.ini"),
            "DATABASE_URL": database_url,
            "PORT": str(port),
            "WEB_CONCURRENCY": str(WORKERS),
            "DB_POOL_MIN_CONNECTIONS": "4",
            "PEER_POOL_MAX": str(PEER_THREADS),
            "API_TOKENS": TOKEN,
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ours(name: str, database_url: str, **extra) -> Server:
    port = free_port()
    return Server(
        name,
        ["-c", "gunicorn.conf.py", "--log-level", "warning", "wsgi:app"],
        base_env(database_url, port, **extra),
        port,
    )


def peer(name: str, module: str, worker_args: list[str], database_url: str) -> Server:
    port = free_port()
    return Server(
        name,
        [
            "-w",
            str(WORKERS),
            *worker_args,
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            f"bench.peers.{module}:app",
        ],
        base_env(database_url, port),
        port,
    )


FASTEST = "fastest common Python stack: FastAPI + asyncpg, uvicorn, token checked"
TUTORIAL = "peer: the tutorial design on Connexion 3 (default middleware, ThreadedConnectionPool on g)"


def fastest(database_url: str) -> Server:
    return peer("peer-asyncpg", "fastapi_asyncpg", ["-k", "uvicorn_worker.UvicornWorker"], database_url)


def tutorial(database_url: str) -> Server:
    return peer("peer-tutorial", "tutorial.app", ["-k", "uvicorn_worker.UvicornWorker"], database_url)


# -- load ------------------------------------------------------------------------------------------
def k6(
    server: Server, target: str = "customer", vus: int = VUS, duration: str = DURATION, warmup: str = "3s", **env
) -> dict:
    """Run k6 against `server`; return throughput, latency percentiles, answers and worker CPU per request."""
    script = str(ROOT / "bench" / "k6" / "get.js")
    common = {
        **os.environ,
        "BASE_URL": server.base,
        "TARGET": target,
        "MAX_ID": str(CUSTOMERS),
        "TOKEN": TOKEN,
        "VUS": str(vus),
        **{k: str(v) for k, v in env.items()},
    }
    if warmup:
        subprocess.run(
            [K6, "run", "--quiet", "--no-summary", script],
            env={**common, "DURATION": warmup},
            check=True,
            capture_output=True,
        )
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    cpu_before = server.cpu_seconds()
    subprocess.run(
        [K6, "run", "--quiet", f"--summary-export={summary}", script],
        env={**common, "DURATION": duration},
        check=True,
        capture_output=True,
    )
    cpu = server.cpu_seconds() - cpu_before
    metrics = json.loads(summary.read_text())["metrics"]
    summary.unlink()
    duration_ms = metrics["http_req_duration"]
    requests = metrics["http_reqs"]["count"]

    def count(name):
        return metrics.get(name, {}).get("count", 0)

    return {
        "rps": metrics["http_reqs"]["rate"],
        "requests": requests,
        "p50": duration_ms["med"],
        "p90": duration_ms["p(90)"],
        "p99": duration_ms["p(99)"],
        "max": duration_ms["max"],
        "good": count("good_answers"),
        "bad": count("bad_answers"),
        "unavailable": count("unavailable_503"),
        "cpu_ms_per_request": 1000 * cpu / max(1, requests),
    }


def _wrk_duration_ms(text: str) -> float:
    """A wrk duration ("812.00us", "17.3ms", "1.02s", "2.00m") in milliseconds."""
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    server: Server, path: str, connections: int = VUS, seconds: int = 10, script: str | None = None, headers=()
) -> dict | None:
    """Peak throughput with wrk (lighter than k6, no body checks): req/s, p50, p99, non-2xx, worker CPU per
    request; None if wrk is absent. `script` is a Lua file in bench/wrk/ (random ids) instead of `path`."""
    binary = shutil.which("wrk")
    if not binary:
        return None
    url = f"{server.base}{path}"
    args = ["-H", f"Authorization: Bearer {TOKEN}", *(arg for header in headers for arg in ("-H", header))]
    if script:
        args = ["-s", str(ROOT / "bench" / "wrk" / script)]
    env = {**os.environ, "TOKEN": TOKEN, "MAX_ID": str(CUSTOMERS)}
    subprocess.run([binary, "-t2", f"-c{connections}", "-d3s", *args, url], check=True, capture_output=True, env=env)
    cpu_before = server.cpu_seconds()
    out = subprocess.run(
        [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *args, url],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    cpu = server.cpu_seconds() - cpu_before
    lines = [line.strip() for line in out.splitlines()]
    errors = "; ".join(line for line in lines if "Non-2xx" in line or "Socket errors" in line)

    def percentile(name: str) -> float:
        return next(_wrk_duration_ms(line.split()[1]) for line in lines if line.startswith(name))

    requests = int(next(line.split()[0] for line in lines if "requests in" in line))
    p50, p99 = percentile("50%"), percentile("99%")
    return {
        "connections": connections,
        "rps": float(next(line.split()[1] for line in lines if line.startswith("Requests/sec"))),
        "p50": p50,
        "p99": p99,
        "tail": p99 / p50,
        "max": _wrk_duration_ms(next(line.split()[3] for line in lines if line.startswith("Latency"))),
        "errors": errors or "none",
        "cpu_ms_per_request": 1000 * cpu / max(1, requests),
    }


TAIL_RUNS = int(os.environ.get("BENCH_TAIL_RUNS", "3"))
CONNECTIONS = (32, 128)


def saturation(url: str) -> dict:
    """wrk at 32 and 128 connections on each server: p50, p99, p99/p50, worker CPU per request.
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


# -- the study ---------------------------------------------------------------------------------------
def prepare_database(max_connections: int = 200, embedded: bool = False) -> tuple[str, EmbeddedPostgres | None, int]:
    """A seeded database: BENCH_DATABASE_URL, or (always, with `embedded`) an embedded server."""
    url = None if embedded else os.environ.get("BENCH_DATABASE_URL")
    pg = None
    if not url:
        pg = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="bench-pg-")) / "data",
            settings={"max_connections": str(max_connections), "shared_buffers": "256MB"},
        )
        pg.start()
        conn = psycopg2.connect(pg.url())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        url = pg.url("bench")
    upgrade(url)
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers")
        seeded = cur.fetchone()[0]
    conn.close()
    if not seeded:
        seed(url, customers=CUSTOMERS, products=1_000, orders=20_000, quiet=True)
    port = pg.port if pg else int(url.rsplit(":", 1)[1].split("/")[0])
    return url, pg, port


def via(url: str, port: int) -> str:
    head, tail = url.rsplit(":", 1)
    return f"{head}:{port}/{tail.split('/', 1)[1]}"


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


def render(r: dict) -> str:
    t = r["throughput"]
    pool, health, none = (
        t["ours: pool, GET /api/customers/{id}"],
        t["ours: no DB, GET /api/health"],
        t["ours: connection per request (DB_POOL_MODE=none)"],
    )
    m, s = r["machine"], r["settings"]
    lines = [
        f"Machine: {m['cpus']} cores, {m['memory_gb']} GiB, Python {m['python']}; {s['workers']} gunicorn workers, "
        f"k6 {s['vus']} VUs for {s['duration']} per row (after a 3 s warm-up). Ours: defaults (4 threads, pool 4 "
        f"per worker); peers: their usual 10 threads (FastAPI: Starlette's 40) and a pool of 10 per worker.",
        "",
        "| Server (same machine, same workers) | k6 req/s | good req/s | p50 ms | p99 ms | bad answers "
        "| worker CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in t.items():
        good_rps = row["good"] / (row["requests"] / row["rps"])
        lines.append(
            f"| {name} | {row['rps']:.0f} | {good_rps:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['bad']} | "
            f"{row['cpu_ms_per_request']:.2f} |"
        )
    lines += [
        "",
        f"DB endpoint / no-DB endpoint on our stack under k6 (checks parse every body, and k6 shares the cores): "
        f"**{pool['rps'] / health['rps']:.2f}**; worker CPU per request {pool['cpu_ms_per_request']:.2f} ms vs "
        f"{health['cpu_ms_per_request']:.2f} ms. Pool / connection-per-request: **{pool['rps'] / none['rps']:.2f}x**.",
    ]
    lines += render_saturation(r.get("saturation"), r.get("writes"))
    lat = {int(k): v for k, v in r["latency"].items()}  # int keys in memory, strings from JSON
    rt_pool, rt_none = lat[0]["pool_round_trips"], lat[0]["none_round_trips"]
    lines += [
        "",
        f"Database round trips per GET, counted at the proxy: pool **{rt_pool:.2f}**, connection per request "
        f"**{rt_none:.2f}** (ratio {rt_none / rt_pool:.2f}).",
        "",
        "| Emulated RTT to the database | pool p50 ms | per-request p50 ms | gain | gain / round-trip ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rtt, row in lat.items():
        if rtt == 0:
            continue
        gain = row["none"]["p50"] / row["pool"]["p50"]
        lines.append(
            f"| {rtt} ms | {row['pool']['p50']:.1f} | {row['none']['p50']:.1f} | {gain:.2f}x | "
            f"{gain / (rt_none / rt_pool):.0%} |"
        )
    o = r["overload"]
    share = o["unavailable"] / max(1, o["requests"])
    per_worker = o["capacity"] / WORKERS
    little_pool = per_worker / (o["service_ms"] / 1000)  # L / W: connections kept busy for W each
    little_cpu = 1000 / o["cpu_ms_per_request"]  # one core per worker (the GIL), CPU ms each
    cores = r["machine"]["cpus"]
    # Utilization law for the whole box: workers and PostgreSQL share the cores; on loopback the
    # one-client service time of this query is almost all database CPU.
    machine = 1000 * cores / (o["cpu_ms_per_request"] + o["service_ms"])
    little = min(little_pool * WORKERS, little_cpu * WORKERS, machine)
    lines += [
        "",
        f"Overload: GET /api/dashboard (one month), pool {o['capacity']} connections in all, "
        f"{4 * o['capacity']} VUs (4x), pool timeout {o['pool_timeout_ms']:.0f} ms: p50 {o['p50']:.1f} ms, "
        f"p99 {o['p99']:.1f} ms, 503 share {share:.1%}, goodput {o['good'] / (o['requests'] / o['rps']):.0f} req/s, "
        f"other errors {o['bad']}.",
        "",
        f"Capacity (Little's law, L = λW): with a service time of {o['service_ms']:.1f} ms (one client) and "
        f"{per_worker:.0f} connections per worker, the pool allows {little_pool:.0f} req/s per worker; the worker's "
        f"CPU ({o['cpu_ms_per_request']:.2f} ms per request on one core, the GIL) allows {little_cpu:.0f}; the machine "
        f"({cores} cores shared by the workers and PostgreSQL: {o['cpu_ms_per_request']:.2f} + {o['service_ms']:.1f} ms "
        f"of CPU per request) allows {machine:.0f} in all. Estimate: the smallest, **{little:.0f} req/s**; measured "
        f"under overload: **{o['good'] / (o['requests'] / o['rps']):.0f} req/s**.",
    ]
    return "\n".join(lines) + "\n"


def render_saturation(sat: dict | None, writes: dict | None = None) -> list[str]:
    """The wrk table: each run of each server at 32 and 128 connections, then the targets' ratios, and
    the write rows."""
    if not sat:
        return ["", "Saturation (wrk): not run, wrk is not installed (`apt-get install wrk`)."]
    lines = [
        "",
        f"Saturation, wrk `-t2 --latency`, 10 s per run after 3 s of warm-up; ours on the database endpoint "
        f"{TAIL_RUNS} times (the tail varies from run to run):",
        "",
        "| Server | conns | req/s | p50 ms | p99 ms | p99/p50 | max ms | worker CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, runs in sat.items():
        for w in runs:
            lines.append(
                f"| {name} | {w['connections']} | {w['rps']:.0f} | {w['p50']:.1f} | {w['p99']:.1f} | "
                f"{w['tail']:.1f} | {w['max']:.0f} | {w['cpu_ms_per_request']:.2f} | {w['errors']} |"
            )
    db, nodb = sat["ours: GET /api/customers/{id} (random ids)"], sat["ours: no DB, GET /api/health"]
    at32 = [w for w in db if w["connections"] == 32]
    nodb32 = next(w for w in nodb if w["connections"] == 32)
    flask32 = next(w for w in sat["peer: Flask + ThreadedConnectionPool, gthread"] if w["connections"] == 32)
    fast32 = next(w for w in sat[FASTEST] if w["connections"] == 32)
    fast_nodb32 = next(w for w in sat[FASTEST + ", no DB"] if w["connections"] == 32)
    rps32 = sum(w["rps"] for w in at32) / len(at32)
    cpu_db = sum(w["cpu_ms_per_request"] for w in at32) / len(at32)
    worst = max(w["tail"] for w in db)
    lines += [
        "",
        f"- Tail: the worst p99/p50 of ours on the database endpoint over all runs is **{worst:.1f}** (target ≤ 4).",
        f"- At 32 connections, ours on the database endpoint: **{rps32:.0f} req/s** (mean of {len(at32)} runs), "
        f"{rps32 / flask32['rps']:.2f}x the Flask peer, {rps32 / fast32['rps']:.2f}x FastAPI + asyncpg.",
        "",
        "Worker CPU per request against FastAPI + asyncpg (its token checked as ours), at 32 connections:",
        "",
        "| | ours ms/req | FastAPI + asyncpg ms/req | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| GET /api/customers/{{id}} (ours: mean of {len(at32)} runs) | {cpu_db:.3f} | "
        f"{fast32['cpu_ms_per_request']:.3f} | **{cpu_db / fast32['cpu_ms_per_request']:.2f}x** | ≤ 2.0x |",
        f"| GET /api/health (no database) | {nodb32['cpu_ms_per_request']:.3f} | "
        f"{fast_nodb32['cpu_ms_per_request']:.3f} | "
        f"**{nodb32['cpu_ms_per_request'] / fast_nodb32['cpu_ms_per_request']:.2f}x** | ≤ 3x |",
    ]
    if writes:
        ours_w, fast_w = writes["ours: POST /api/orders"], writes[FASTEST]
        lines.append(
            f"| POST /api/orders (one transaction) | {ours_w['cpu_ms_per_request']:.3f} | "
            f"{fast_w['cpu_ms_per_request']:.3f} | "
            f"**{ours_w['cpu_ms_per_request'] / fast_w['cpu_ms_per_request']:.2f}x** | ≤ 2.5x |"
        )
        lines += [
            "",
            "Writes: wrk 32 connections, 10 s, `bench/wrk/new_order.lua` (a random customer, one or two random "
            "products; stock reset before each row):",
            "",
            "| Server | req/s | p50 ms | p99 ms | worker CPU ms/req | errors |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, w in writes.items():
            lines.append(
                f"| {name} | {w['rps']:.0f} | {w['p50']:.1f} | {w['p99']:.1f} | {w['cpu_ms_per_request']:.2f} | "
                f"{w['errors']} |"
            )
    return lines


def chart(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(r["throughput"])
    values = [r["throughput"][n]["rps"] for n in names]
    colors = ["#2b7bb9" if n.startswith("ours") else "#999999" for n in names]
    left.barh([n.replace(", ", "\n", 1) for n in names], values, color=colors)
    left.invert_yaxis()
    left.set_xlabel("requests per second (higher is better)")
    left.set_title(f"Throughput, {r['settings']['workers']} workers, {r['settings']['vus']} VUs")
    rtts = [int(k) for k in r["latency"] if int(k) > 0]
    lat = {int(k): v for k, v in r["latency"].items()}
    right.plot(rtts, [lat[k]["pool"]["p50"] for k in rtts], "o-", label="pool")
    right.plot(rtts, [lat[k]["none"]["p50"] for k in rtts], "s--", label="connection per request")
    right.set_xlabel("emulated round-trip time to the database (ms)")
    right.set_ylabel("p50 latency (ms), one client")
    right.set_title("GET /api/customers/{id}, database farther away")
    right.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench.png", dpi=110)


def report_only() -> int:
    """Re-render results.md and the chart from the last results.json (no load is run)."""
    results = json.loads((RESULTS / "results.json").read_text())
    report = render(results)
    (RESULTS / "results.md").write_text(report)
    chart(results)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(report_only() if "--report" in sys.argv else main())
