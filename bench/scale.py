"""Every endpoint at a small and at a large store, side by side (docs/PERFORMANCE.md, "Data volume").

    .venv/bin/python bench/scale.py        # make bench-scale

Stores (orders over three years, 1 000 products, one customer with a fiftieth of the orders):
small, 10 000 customers / 50 000 orders; large, 1 000 000 / 5 000 000 (BENCH_SCALE_SIZES picks,
e.g. `small,large,huge` adds 2 000 000 / 20 000 000 where the disk allows). For each endpoint:
the first answer (cold: the dashboard's report computed), then the median and p99 of
BENCH_SCALE_REQUESTS (15) more with one keep-alive client, wrk at 32 connections for
BENCH_SCALE_SECONDS (5) (BENCH_SCALE_ONLY=search: those whose name holds it), and the shared buffers one request's statements touch
(`EXPLAIN (ANALYZE, BUFFERS)` of what its query function sends). Embedded PostgreSQL with
shared_buffers 1 GB, gunicorn as gunicorn.conf.py runs it (2 workers). Loopback only; stops by itself
(about 15 minutes, most of it seeding the large store). Results in bench/results/scale.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg2  # noqa: E402

from bench.config import RESULTS, TOKEN  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import ours  # noqa: E402
from harness.recording import recording  # noqa: E402
from swagger_server.db.connection import Cursor  # noqa: E402
from swagger_server.db.embedded import EmbeddedPostgres  # noqa: E402
from swagger_server.db.migrate import upgrade  # noqa: E402
from swagger_server.db.queries import customers, dashboard, orders, products  # noqa: E402
from swagger_server.db.seed import seed  # noqa: E402

SIZES = {"small": (10_000, 50_000), "large": (1_000_000, 5_000_000), "huge": (2_000_000, 20_000_000)}
REQUESTS = int(os.environ.get("BENCH_SCALE_REQUESTS", "15"))
SECONDS = int(os.environ.get("BENCH_SCALE_SECONDS", "5"))
ONLY = os.environ.get("BENCH_SCALE_ONLY", "")  # endpoints whose name holds this text (all by default)
HEAVY = 1  # the customer with a fiftieth of the orders (100 000 in the large store)


def endpoints(n_customers: int, n_orders: int, today: date, address: str) -> list[tuple[str, str, object]]:
    """(name, path, the query call it makes, for its buffers); `address`, one customer's whole email."""
    rare = f".{n_customers - 17}@"
    year, three = (today - timedelta(days=364)).isoformat(), (today - timedelta(days=1094)).isoformat()

    def report(days: int):
        return lambda c: dashboard.sales_report(c, today - timedelta(days=days - 1), today, 5, 0)

    return [
        ("search, rare term", f"/api/customers?q={rare}", lambda c: customers.list_customers(c, 21, None, rare)),
        ("search, absent term", "/api/customers?q=zqxzqx", lambda c: customers.list_customers(c, 21, None, "zqxzqx")),
        (
            "search, common term",
            "/api/customers?q=lovelace",
            lambda c: customers.list_customers(c, 21, None, "lovelace"),
        ),
        (
            # A fortieth of a percent of the customers match, each trigram of it is in 5 %: the index
            # would intersect long lists; the search's probe finds its 20 in the first 10 000 ids.
            "search, middling term",
            "/api/customers?q=ada.turing",
            lambda c: customers.list_customers(c, 21, None, "ada.turing"),
        ),
        (
            # Every trigram of it is in one row in ten or more, together in one row in 3 500: the
            # costliest kind of term found for the trigram indexes (db/queries/customers.py).
            "search, common trigrams",
            "/api/customers?q=ada.turing.1",
            lambda c: customers.list_customers(c, 21, None, "ada.turing.1"),
        ),
        (
            "search, a whole address",
            f"/api/customers?q={address}",
            lambda c: customers.list_customers(c, 21, None, address),
        ),
        (
            "search, a short local part",
            "/api/customers?q=ab@example.com",
            lambda c: customers.list_customers(c, 21, None, "ab@example.com"),
        ),
        ("customers, first page", "/api/customers", lambda c: customers.list_customers(c, 21)),
        (
            "customers, deep page",
            f"/api/customers?after={n_customers - 100}",
            lambda c: customers.list_customers(c, 21, n_customers - 100),
        ),
        ("a customer", f"/api/customers/{n_customers // 2}", lambda c: customers.get_customer(c, n_customers // 2)),
        (
            "a customer's orders (the heavy one)",
            f"/api/customers/{HEAVY}/orders",
            lambda c: orders.list_customer_orders(c, HEAVY, 21),
        ),
        (
            "... their last page",
            f"/api/customers/{HEAVY}/orders?after={n_orders - 200}",
            lambda c: orders.list_customer_orders(c, HEAVY, 21, n_orders - 200),
        ),
        ("an order", f"/api/orders/{n_orders // 3}", lambda c: orders.get_order(c, n_orders // 3)),
        ("products", "/api/products", lambda c: products.list_products(c, 21)),
        ("dashboard, 30 days", "/api/dashboard", report(30)),
        ("dashboard, a year", f"/api/dashboard?from={year}", report(365)),
        ("dashboard, three years", f"/api/dashboard?from={three}", report(1095)),
        ("health/db", "/api/health/db", None),
    ]


def buffers(url: str, call) -> int | None:
    """Shared buffers (hit + read) the statements of one call touch."""
    if call is None:
        return None
    conn = recording(url)
    try:
        call(conn)
        total = 0
        with conn.cursor(cursor_factory=Cursor) as cur:  # not recorded: the EXPLAINs themselves
            for sent in list(conn.sent):
                parts = [p.strip() for p in sent.split(";\n") if p.strip()]
                for part in parts:
                    if part.startswith("SET LOCAL"):
                        continue
                    cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {part}")
                    plan = cur.fetchone()[0][0]
                    total += _buffers(plan["Plan"]) + _buffers(plan.get("Planning", {}))
        return total
    finally:
        conn.close()


def _buffers(node: dict) -> int:
    return int(node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0))


def timed(client: httpx.Client, path: str) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.get(path)
    return (time.perf_counter() - start) * 1000, response.status_code


def measure(size: str, pg: EmbeddedPostgres) -> list[dict]:
    n_customers, n_orders = SIZES[size]
    admin = psycopg2.connect(pg.url())
    admin.autocommit = True
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "scale_{size}"')
    admin.cursor().execute(f'CREATE DATABASE "scale_{size}"')
    admin.close()
    url = pg.url(f"scale_{size}")
    upgrade(url)
    today = datetime.now(UTC).date()
    started = time.monotonic()
    seed(url, n_customers, 1_000, n_orders, quiet=True, days=1095)
    seeded = time.monotonic() - started
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE orders SET customer_id = %s WHERE id %% 50 = 0", (HEAVY,))
        cur.execute("VACUUM ANALYZE")
        cur.execute("SELECT email FROM customers WHERE id = %s", (n_customers - 17,))
        address = cur.fetchone()[0]
    conn.close()
    print(f"{size}: seeded {n_customers} customers, {n_orders} orders in {seeded:.0f} s", flush=True)
    server = ours(f"scale-{size}", url)
    rows = []
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as client:
            for name, path, call in endpoints(n_customers, n_orders, today, address):
                if ONLY not in name:
                    continue
                cold, status = timed(client, path)
                samples = [timed(client, path) for _ in range(REQUESTS)]
                times = sorted(t for t, _ in samples)
                statuses = sorted({s for _, s in samples} | {status})
                run = wrk(server, path, connections=32, seconds=SECONDS)
                rows.append(
                    {
                        "size": size,
                        "endpoint": name,
                        "path": path,
                        "cold_ms": round(cold, 1),
                        "median_ms": round(statistics.median(times), 2),
                        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
                        "statuses": statuses,
                        "wrk_rps": run and run["rps"],
                        "wrk_p50_ms": run and run["p50"],
                        "wrk_p99_ms": run and run["p99"],
                        "wrk_errors": run and run["errors"],
                        "buffers": buffers(url, call),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        rows.append({"size": size, "endpoint": "db seed", "seconds": round(seeded, 1)})
    finally:
        server.stop()
    return rows


def table(rows: list[dict]) -> str:
    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    by = {(r["size"], r["endpoint"]): r for r in rows}
    names = list(dict.fromkeys(r["endpoint"] for r in rows if "path" in r))
    head = (
        "| endpoint | "
        + " | ".join(f"{s}: median / p99 ms | {s}: wrk32 p50 ms, req/s | {s}: buffers" for s in sizes)
        + " | large within 2x small + 5 ms |"
    )
    lines = [head, "|" + "---|" * (2 + 3 * len(sizes))]
    for name in names:
        cells = []
        for s in sizes:
            r = by.get((s, name))
            if r is None:
                cells += ["", "", ""]
                continue
            cells.append(f"{r['median_ms']} / {r['p99_ms']} (cold {r['cold_ms']})")
            cells.append(f"{r['wrk_p50_ms']}, {r['wrk_rps']:.0f}" if r["wrk_rps"] else "")
            cells.append(str(r["buffers"] if r["buffers"] is not None else ""))
        small, large = by.get(("small", name)), by.get(("large", name))
        verdict = ""
        if small and large:
            verdict = "yes" if large["median_ms"] <= 2 * small["median_ms"] + 5 else "**no**"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    for s in sizes:
        r = by.get((s, "db seed"))
        if r:
            lines.append(f"\n`db seed` of the {s} store: {r['seconds']} s")
    return "\n".join(lines)


def main() -> int:
    sizes = os.environ.get("BENCH_SCALE_SIZES", "small,large").split(",")
    pg = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="bench-scale-")) / "data",
        settings={"max_connections": "200", "shared_buffers": "1GB"},
    )
    pg.start()
    rows: list[dict] = []
    try:
        for size in sizes:
            rows += measure(size, pg)
    finally:
        pg.destroy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2))
    text = table(rows)
    (RESULTS / "scale.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
