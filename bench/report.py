"""The report: results.md and the chart from results.json (`make bench` writes both; `--report` re-renders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.config import RESULTS, WORKERS  # noqa: E402
from bench.scenarios import TAIL_RUNS  # noqa: E402
from bench.servers import FASTEST  # noqa: E402


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
    """The wrk table: each run of each server at 32, 128 and 512 connections (with the spread over its
    workers), then the targets' ratios, and the write rows."""
    if not sat:
        return ["", "Saturation (wrk): not run, wrk is not installed (`apt-get install wrk`)."]
    lines = [
        "",
        f"Saturation, wrk `-t2 --latency`, 10 s per run after 3 s of warm-up; ours on the database endpoint "
        f"{TAIL_RUNS} times (the tail varies from run to run):",
        "",
        "| Server | conns | req/s | p50 ms | p99 ms | p99/p50 | max ms | worker CPU ms/req | "
        "conns per worker | requests per worker % | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, runs in sat.items():
        for w in runs:
            spread = w.get("spread") or {}
            lines.append(
                f"| {name} | {w['connections']} | {w['rps']:.0f} | {w['p50']:.1f} | {w['p99']:.1f} | "
                f"{w['tail']:.1f} | {w['max']:.0f} | {w['cpu_ms_per_request']:.2f} | "
                f"{'/'.join(map(str, spread.get('connections', []))) or 'n/a'} | "
                f"{'/'.join(map(str, spread.get('requests_share', []))) or 'n/a'} | {w['errors']} |"
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
    by_conns = ", ".join(
        f"{c}: {max(w['tail'] for w in db + nodb if w['connections'] == c):.1f}"
        for c in sorted({w["connections"] for w in db})
    )
    spreads = [w["spread"] for w in db + nodb if w.get("spread")]
    lines += [
        "",
        f"- Tail: the worst p99/p50 of ours on the database endpoint over all runs is **{worst:.1f}** (target ≤ 4); "
        f"the worst of ours (both endpoints) by connections, {by_conns}.",
        "- Spread over the workers (ours, all runs; target within 20 % of even): connections at most "
        + (
            f"**{max(s['connections_off_even'] for s in spreads):.0f} %** off even, requests at most "
            f"**{max(s['requests_off_even'] for s in spreads):.0f} %**."
            if spreads
            else "not measured (`ss` is absent)."
        ),
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
            f"**{ours_w['cpu_ms_per_request'] / fast_w['cpu_ms_per_request']:.2f}x** | ≤ 2.0x |"
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
