"""Upgrades while the service serves, over real gunicorn and a real PostgreSQL, with a load running:

1. the pile-up: a long reader holds a lock on `orders` while `db upgrade` adds columns; the migration
   yields instead of queueing traffic behind it (no 5xx, p99 under a second), is applied once the
   reader ends, and no new column leaks into an answer;
2. a rolling upgrade: two hosts on the previous release, this release's schema applied under load
   (with a long reader in the way), then each host restarted onto this code in turn, while clients
   retry orders with Idempotency-Keys across the boundary: nothing lost, nothing doubled, no 5xx.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from swagger_server.db.migrate import upgrade
from tests.support.auth import TOKEN
from tests.support.database import admin_connect, query, schema_dir
from tests.support.servers import Gunicorn

ROOT = Path(__file__).resolve().parents[2]
# The release before this one (1.0.0), as `git archive` gives it: the code the rolling upgrade starts from.
PREVIOUS_RELEASE = "af8ea6094dcd5706ae8a31fa4ff3fd0841f6006f"
CUSTOMERS, PRODUCTS = 50, 10
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def seed(url: str) -> None:
    conn = admin_connect(url)
    try:
        query(
            conn,
            "INSERT INTO customers (name, email) SELECT 'Customer ' || i, 'c' || i || '@example.com'"
            " FROM generate_series(1, %s) i",
            (CUSTOMERS,),
        )
        query(
            conn,
            "INSERT INTO products (sku, name, price_cents, stock) SELECT 'SKU-' || i, 'Product ' || i, 100 * i, 1000000"
            " FROM generate_series(1, %s) i",
            (PRODUCTS,),
        )
    finally:
        conn.close()


@dataclass
class Outcome:
    started: float  # monotonic
    seconds: float
    op: str
    status: int | str  # the HTTP status, or the connection error's name
    body: dict = field(default_factory=dict)


class Load:
    """`clients` threads calling the hosts in `bases` (a host that refuses is skipped for the next, as
    a load balancer would): reads of customers, products and orders, and orders placed with an
    Idempotency-Key. A third of the orders are sent twice, to the other host, as a client that lost
    the first answer would: the second must find the first's order. Every outcome is kept."""

    def __init__(self, bases: list[str], clients: int = 6):
        self.bases = bases
        self.outcomes: list[Outcome] = []
        self.orders: dict[str, list[int]] = {}  # Idempotency-Key -> the order ids its answers named
        self.running = True
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for t in self.threads:
            t.join(30)

    def _call(self, host: int, method: str, path: str, body: dict | None, headers: dict) -> tuple[int, dict]:
        base = self.bases[host % len(self.bases)].removeprefix("http://")
        conn = http.client.HTTPConnection(base, timeout=10)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data else {})
        finally:
            conn.close()

    def _record(self, op: str, host: int, method: str, path: str, body=None, headers=HEADERS) -> Outcome:
        """One call; on a refused or cut connection, the next host, until an answer (a retry is safe:
        reads, and orders by their Idempotency-Key)."""
        for attempt in range(20):
            start = time.monotonic()
            try:
                status, data = self._call(host + attempt, method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                outcome = Outcome(start, time.monotonic() - start, op, type(exc).__name__)
                with self._lock:
                    self.outcomes.append(outcome)
                time.sleep(0.05)  # pacing: a failed request is retried 50 ms later, as a client would
                continue
            outcome = Outcome(start, time.monotonic() - start, op, status, data if isinstance(data, dict) else {})
            with self._lock:
                self.outcomes.append(outcome)
            return outcome
        raise AssertionError(f"no host answered {method} {path}")

    def _client(self, seed_: int) -> None:
        rng = random.Random(seed_)
        while self.running:
            host = rng.randrange(len(self.bases))
            self._record("get_customer", host, "GET", f"/api/customers/{rng.randint(1, CUSTOMERS)}")
            self._record("get_product", host, "GET", f"/api/products/{rng.randint(1, PRODUCTS)}")
            key = str(uuid.uuid4())
            order = {
                "customer_id": rng.randint(1, CUSTOMERS),
                "lines": [{"product_id": rng.randint(1, PRODUCTS), "quantity": rng.randint(1, 3)}],
            }
            headers = {**HEADERS, "Idempotency-Key": key}
            sends = 2 if rng.random() < 1 / 3 else 1
            for n in range(sends):
                placed = self._record("create_order", host + n, "POST", "/api/orders", order, headers)
                if placed.status in (200, 201):
                    with self._lock:
                        self.orders.setdefault(key, []).append(placed.body["id"])
            if placed.status in (200, 201):
                self._record("get_order", host, "GET", f"/api/orders/{placed.body['id']}")

    def answers(self) -> list[Outcome]:
        return [o for o in self.outcomes if isinstance(o.status, int)]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_upgrade(cwd: Path, url: str, *args: str) -> subprocess.Popen:
    """`python -m swagger_server db upgrade` of the tree at `cwd` (or, with args, a script), as an operator runs it."""
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "APP_CONFIG": str(ROOT / "tests" / "empty.ini")}
    command = [sys.executable, *(args or ("-m", "swagger_server", "db", "upgrade"))]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Reader:
    """A long report: a transaction that has read `orders` and holds its lock until `end()`."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url, application_name="long-report")
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*), sum(total_cents) FROM orders")

    def end(self) -> None:
        self.conn.rollback()
        self.conn.close()


ADD_COLUMNS = (
    "-- the operator's one-line change: a nullable column on orders and one on customers\n"
    "ALTER TABLE orders ADD COLUMN upgrade_note text;\nALTER TABLE customers ADD COLUMN upgrade_note text;\n"
)
UPGRADE_WITH = """
import sys
from pathlib import Path
from swagger_server.db.migrate import upgrade
upgrade(sys.argv[1], schema_dir=Path(sys.argv[2]), say=lambda line: print(line, flush=True))
"""


# The bound (p99 <= 1 s) against the shipped lock timeout (0.5 s): a request waits at most that
# behind a queued ALTER, and the other half second is its own time on a busy 2-core machine (p50 ~20 ms).
@pytest.mark.timing
@pytest.mark.slow
def test_a_migration_behind_a_long_reader_never_piles_traffic_up(new_database, tmp_path):
    url = new_database("store_pileup")
    upgrade(url)
    seed(url)
    folder = schema_dir(tmp_path, extra={"900_upgrade_note.sql": ADD_COLUMNS})
    server = Gunicorn(url)
    try:
        with Load([server.base], clients=8) as load:
            wait_until(lambda: len(load.answers()) > 100, timeout=20, message="the load to run")
            reader = Reader(url)
            # The migration, with the shipped defaults ([MIGRATE] lock_timeout 0.5 s), as a separate process.
            migration = run_upgrade(ROOT, url, "-c", UPGRADE_WITH, url, str(folder))
            waiting_from = time.monotonic()
            time.sleep(6)  # the report runs on; the migration waits for it
            waiting_until = time.monotonic()
            reader.end()
            output, _ = migration.communicate(timeout=60)
            time.sleep(1)  # time passing: load continues after the migration ends
        assert migration.returncode == 0, output
        assert output.count("yielded") >= 2 and "applied 900_upgrade_note.sql" in output, output
        answers = load.answers()
        assert not [o for o in load.outcomes if not isinstance(o.status, int)], "a connection failed"
        assert not [o for o in answers if o.status >= 500], [o for o in answers if o.status >= 500][:5]
        during = [o.seconds for o in answers if waiting_from <= o.started <= waiting_until]
        print(  # the figures docs/UPGRADING.md quotes (pytest -s)
            f"pile-up: {len(answers)} answers, {len(during)} while the migration waited: p50"
            f" {sorted(during)[len(during) // 2]:.3f} s, p99 {p99(during):.3f} s, max {max(during):.3f} s,"
            f" 5xx {sum(o.status >= 500 for o in answers)}, yields {output.count('yielded')}"
        )
        assert len(during) > 100, len(during)
        assert p99(during) <= 1.0, f"p99 {p99(during):.3f} s while the migration waited"
        conn = admin_connect(url)
        try:  # applied once the reader ended, once
            assert query(conn, "SELECT count(*) FROM schema_migrations WHERE version = '900_upgrade_note.sql'") == [
                (1,)
            ]
            query(conn, "UPDATE customers SET upgrade_note = 'internal' WHERE id = 1")
        finally:
            conn.close()
        # No new column leaks into an answer: every query names its columns.
        after = [o for o in load.answers() if o.started > waiting_until and o.status == 200]
        assert after and not [o for o in after if "upgrade_note" in o.body]
        status, body = Load([server.base])._call(0, "GET", "/api/customers/1", None, HEADERS)
        assert status == 200 and "upgrade_note" not in body, body
    finally:
        server.stop()


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    """The previous release's tree, from git (`git archive`), beside this one."""
    tree = tmp_path_factory.mktemp("previous-release")
    # tests/mutations.py runs this in a scratch copy without .git: it names the repository it copied.
    repository = os.environ.get("MUTATION_SOURCE_TREE") or ROOT
    archive = subprocess.run(
        ["git", "archive", "--format=tar", PREVIOUS_RELEASE], cwd=repository, capture_output=True, check=False
    )
    assert archive.returncode == 0, f"git archive {PREVIOUS_RELEASE}: {archive.stderr.decode()[-500:]}"
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


@pytest.mark.slow
def test_a_rolling_upgrade_under_load_loses_nothing_and_doubles_nothing(new_database, previous_release):
    url = new_database("store_rolling")
    installed = run_upgrade(previous_release, url)  # the previous release's own `db upgrade`
    assert installed.wait(60) == 0, installed.stdout.read()
    seed(url)
    ports = [free_port(), free_port()]
    hosts = [Gunicorn(url, port=port, cwd=previous_release) for port in ports]
    try:
        with Load([h.base for h in hosts]) as load:
            wait_until(lambda: len(load.orders) > 30, timeout=20, message="orders on the previous release")
            # 1. This release's schema, applied under load with a long report in the way.
            reader = Reader(url)
            migration = run_upgrade(ROOT, url)
            time.sleep(2)  # time passing: the report holds its snapshot while the migration waits
            reader.end()
            output, _ = migration.communicate(timeout=60)
            assert migration.returncode == 0, output
            assert "yielded" in output and "schema up to date" in output, output
            before = len(load.orders)
            wait_until(lambda: len(load.orders) > before + 20, timeout=20, message="orders on the new schema")
            # 2. Each host onto this release in turn; the other serves meanwhile.
            for i, port in enumerate(ports):
                hosts[i].stop()
                hosts[i] = Gunicorn(url, port=port)
                served = len(load.orders)
                wait_until(lambda n=served: len(load.orders) > n + 20, timeout=30, message=f"orders after host {i}")
        answers = load.answers()
        statuses = {o.status for o in answers}
        print(
            f"rolling: {len(answers)} answers, {len(load.orders)} orders ({sum(len(v) > 1 for v in load.orders.values())}"
            f" sent twice), {len(load.outcomes) - len(answers)} connections refused or cut (retried), statuses {statuses}"
        )
        assert not [o for o in answers if o.status >= 500], [
            (o.op, o.status, o.body) for o in answers if o.status >= 500
        ]
        assert statuses <= {200, 201}, statuses
        # Nothing doubled: each key's answers name one order, and a retry across the boundary found it.
        repeated = {k: ids for k, ids in load.orders.items() if len(ids) > 1}
        assert len(repeated) > 10, len(repeated)
        assert all(len(set(ids)) == 1 for ids in load.orders.values()), {
            k: v for k, v in repeated.items() if len(set(v)) > 1
        }
        # Nothing lost: every order answered is stored, and there is no other.
        conn = admin_connect(url)
        try:
            stored = {r[0] for r in query(conn, "SELECT id FROM orders")}
            assert stored == {ids[0] for ids in load.orders.values()}, (len(stored), len(load.orders))
            keys = query(conn, "SELECT count(*) FROM idempotency_keys")[0][0]
            assert keys == len(load.orders)
        finally:
            conn.close()
    finally:
        for host in hosts:
            host.stop()


def test_a_key_stored_before_keys_had_a_client_is_recognised_for_the_same_order(client, store):
    """002 moved the keys orders held into idempotency_keys with client '' (their client was not
    recorded): a retry of the same order across that upgrade finds it; another order with the same
    key is a new order (the key was nobody's), not a refusal."""
    body = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 2}]}
    fingerprint = hashlib.sha256(json.dumps([1, [(1, 2)]]).encode()).hexdigest()
    query(
        store,
        "INSERT INTO idempotency_keys (client, key, order_id, request_hash) VALUES ('', 'legacy-1', 2, %s)",
        (fingerprint,),
    )
    replay = client.post("/api/orders", json=body, headers={"Idempotency-Key": "legacy-1"})
    assert replay.status_code == 200 and replay.json()["id"] == 2, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = client.post(
        "/api/orders",
        json={**body, "lines": [{"product_id": 2, "quantity": 1}]},
        headers={"Idempotency-Key": "legacy-1"},
    )
    assert other.status_code == 201 and other.json()["id"] not in (1, 2), other.text
    again = client.post(
        "/api/orders",
        json={**body, "lines": [{"product_id": 2, "quantity": 1}]},
        headers={"Idempotency-Key": "legacy-1"},
    )
    assert again.status_code == 200 and again.json()["id"] == other.json()["id"]  # now the client's own key
