"""Every query the service runs keeps its plan at size: on a store of a few hundred thousand rows
(loaded by `db seed`, in seconds), each query function runs as its endpoint runs it, and each
statement it sent is explained (`EXPLAIN (ANALYZE, FORMAT JSON)`; writes plan-only, rolled back):
no sequential scan of customers, orders or order_lines, no sort that spills to disk, and no point
query that reads rows only to filter them out (the search's old plan: customers_pkey, 999 999 rows
removed). A query function that this file does not run fails the coverage test, naming it."""

from __future__ import annotations

import inspect
import json
import re
from datetime import date, timedelta

import psycopg2
import pytest

from harness.recording import recording
from swagger_server.db import queries
from swagger_server.db.queries import customers, dashboard, health, orders, products, rollups, trigrams
from swagger_server.db.seed import seed
from tests.support.database import admin_connect, query, schema_database

# The module's store is seeded once, in its first test's setup: about 15 s alone, about 45 s beside the
# other modules of a parallel `make test`, once over 120 s (the default per-test timeout) on a machine
# loaded past that. The timeout of this module's tests is the seeding's bound, not a test's.
pytestmark = pytest.mark.timeout(600)
BIG = {"customers", "orders", "order_lines", "sales_product_days"}
CUSTOMERS, ORDERS = 60_000, 300_000
TODAY = date(2026, 12, 6)
HEAVY = 1  # the customer with many orders (a tenth of them): paging through them stays flat


@pytest.fixture(scope="module")
def plans_url(pg_server):
    url = schema_database(pg_server, "store_plans")
    from datetime import UTC, datetime

    seed(url, CUSTOMERS, 1_000, ORDERS, quiet=True, today=datetime(2026, 12, 6, tzinfo=UTC))
    conn = admin_connect(url)
    # One customer with a tenth of the orders, some orders past the rollups' watermark, a dirty day,
    # and idempotency keys: what each query meets in a store that has lived a while.
    query(conn, "UPDATE orders SET customer_id = %s WHERE id %% 10 = 0", (HEAVY,))
    query(
        conn,
        "INSERT INTO orders (customer_id, total_cents, created_at)"
        " SELECT 1 + i %% 1000, 100, '2026-12-05 12:00+00' FROM generate_series(1, 50) i",
    )
    query(
        conn,
        "UPDATE orders SET created_at = created_at + interval '1 minute' WHERE id ="
        " (SELECT min(id) FROM orders WHERE created_at >= '2026-02-05' AND created_at < '2026-02-06')",
    )
    query(
        conn,
        "INSERT INTO idempotency_keys (client, key, order_id, request_hash)"
        " SELECT 'c' || i %% 50, 'k' || i, i, 'h' FROM generate_series(1, 20000) i",
    )
    query(conn, "VACUUM ANALYZE")
    # An address ANALYZE's sample holds: the planner estimated such a term at 1 % of the table and
    # walked the primary key for it, filtering every row (the search before its probe).
    SAMPLED["email"] = query(
        conn,
        "SELECT (histogram_bounds::text::text[])[10] FROM pg_stats WHERE tablename = 'customers' AND attname = 'email'",
    )[0][0]
    conn.close()
    return url


@pytest.fixture
def recorder(plans_url):
    conn = recording(plans_url)
    yield conn
    conn.close()


SAMPLED: dict[str, str] = {}
PROBE = customers.SEARCH_PROBE  # the search's probe filters at most this many rows (a scan: 60 000)


def rare_email() -> str:
    return f".{CUSTOMERS - 17}@"


# (name, the query function, a call as its endpoint makes it, the most rows one scan may filter out)
READS = [
    ("get_customer", customers.get_customer, lambda c: customers.get_customer(c, CUSTOMERS // 2), 0),
    ("customer_version", customers.customer_version, lambda c: customers.customer_version(c, 7), 0),
    ("list_customers: first page", customers.list_customers, lambda c: customers.list_customers(c, 21), 0),
    ("list_customers: deep page", None, lambda c: customers.list_customers(c, 21, CUSTOMERS - 30), 0),
    ("list_customers: rare term", None, lambda c: customers.list_customers(c, 21, None, rare_email()), PROBE),
    ("list_customers: absent term", None, lambda c: customers.list_customers(c, 21, None, "zqxzqxzq"), PROBE),
    ("list_customers: common term", None, lambda c: customers.list_customers(c, 21, None, "lovelace"), PROBE),
    ("list_customers: common trigrams", None, lambda c: customers.list_customers(c, 21, None, "ada.turing.1"), PROBE),
    ("list_customers: middle term", None, lambda c: customers.list_customers(c, 21, None, "ada.turing"), PROBE),
    ("list_customers: term, deep", None, lambda c: customers.list_customers(c, 21, CUSTOMERS - 500, "hopper"), PROBE),
    ("list_customers: sampled address", None, lambda c: customers.list_customers(c, 21, None, SAMPLED["email"]), PROBE),
    (
        "list_customers: short local part",
        None,
        lambda c: customers.list_customers(c, 21, None, "ab@example.com"),
        PROBE,
    ),
    ("list_customers: domain", None, lambda c: customers.list_customers(c, 21, None, "@example.org"), PROBE),
    ("get_order", orders.get_order, lambda c: orders.get_order(c, ORDERS // 3), 0),
    ("list_customer_orders", orders.list_customer_orders, lambda c: orders.list_customer_orders(c, HEAVY, 21), 0),
    (
        "list_customer_orders: deep page",
        None,
        lambda c: orders.list_customer_orders(c, HEAVY, 21, ORDERS - 100),
        0,
    ),
    (
        "find_by_idempotency_key",
        orders.find_by_idempotency_key,
        lambda c: orders.find_by_idempotency_key(c, "c7", "k7", 86400, "h"),
        10,
    ),
    ("get_product", products.get_product, lambda c: products.get_product(c, 500), 0),
    ("product_version", products.product_version, lambda c: products.product_version(c, 500), 0),
    ("list_products", products.list_products, lambda c: products.list_products(c, 21, None, True), 100),
    ("dashboard: 30 days", dashboard.sales_report, lambda c: report(c, 30), None),
    ("dashboard: a year", None, lambda c: report(c, 365), None),
    ("dashboard: a week, a dirty day", None, lambda c: report(c, 7, end=TODAY - timedelta(days=300)), None),
    ("probe", health.probe, health.probe, 0),
    ("connections_by_application", health.connections_by_application, health.connections_by_application, None),
    ("ping", health.ping, health.ping, 0),
]
# Writes: planned, not run (each in a transaction rolled back).
WRITES = [
    ("lock_customer", customers.lock_customer, lambda c: customers.lock_customer(c, 5)),
    ("create_customer", customers.create_customer, lambda c: customers.create_customer(c, "N", "plan@example.com")),
    ("update_customer", customers.update_customer, lambda c: customers.update_customer(c, 5, "N", None)),
    ("delete_customer", customers.delete_customer, lambda c: customers.delete_customer(c, CUSTOMERS)),
    (
        "remember_idempotency_key",
        orders.remember_idempotency_key,
        lambda c: orders.remember_idempotency_key(c, "c", "new-key", 5, "h", 86400),
    ),
    ("lock_products", orders.lock_products, lambda c: orders.lock_products(c, [3, 1, 2])),
    ("insert_order", orders.insert_order, lambda c: orders.insert_order(c, 5, [(1, 1, 100), (2, 1, 200)])),
    ("create_product", products.create_product, lambda c: products.create_product(c, "PLAN-1", "N", 1, 1)),
    ("update_product", products.update_product, lambda c: products.update_product(c, 5, {"stock": 3})),
    ("roll_up", rollups.roll_up, lambda c: rollups.roll_up(c, ORDERS + 50, 10_000)),
]
# Query functions with no plan to guard, and why.
NOT_PLANNED = {
    "searchable": "no SQL: the rule a search term must meet",
    "like_escape": "no SQL",
    "whole_months": "no SQL",
    "direct_report": "the rollups' reference in tests and benchmarks: never served",
    "rebuild": "db seed only, over the whole store by design",
    "complete_up_to": "a LOCK and a sequence's value: no table is read",
}


def report(conn, days: int, end: date = TODAY):
    return dashboard.sales_report(conn, end - timedelta(days=days - 1), end, 5, timeout_ms=0)


def statements(sent: str) -> tuple[list[str], list[str]]:
    """(the SET LOCALs, the statements) of one message."""
    parts = [p.strip() for p in re.split(r";\s*\n", sent) if p.strip()]
    settings = [p for p in parts if re.match(r"SET LOCAL", p)]
    return settings, [p for p in parts if p not in settings]


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def problems(plan: dict, max_removed: int | None) -> list[str]:
    found = []
    for node in plan_nodes(plan):
        relation = node.get("Relation Name")
        if node["Node Type"] == "Seq Scan" and relation in BIG:
            found.append(f"Seq Scan on {relation}")
        if node.get("Sort Space Type") == "Disk":
            found.append(f"a sort spilled to disk ({node.get('Sort Space Used')} kB)")
        removed = node.get("Rows Removed by Filter", 0) * node.get("Actual Loops", 1)
        if max_removed is not None and relation in BIG and removed > max_removed:
            found.append(f"{node['Node Type']} on {relation} filtered out {removed:.0f} rows (bound {max_removed})")
    return found


def explain(url: str, sent: str, analyze: bool) -> list[dict]:
    conn = admin_connect(url)
    try:
        settings, bodies = statements(sent)
        out = []
        with conn.cursor() as cur:
            for body in bodies:
                cur.execute("BEGIN")
                for setting in settings:
                    cur.execute(setting)
                options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
                cur.execute(f"EXPLAIN ({options}) {body}")
                out.append(cur.fetchone()[0][0]["Plan"])
                cur.execute("ROLLBACK")
        return out
    finally:
        conn.close()


@pytest.mark.parametrize("name, function, call, max_removed", READS, ids=[r[0] for r in READS])
def test_a_read_keeps_its_plan_at_size(plans_url, recorder, name, function, call, max_removed):
    call(recorder)
    assert recorder.sent, f"{name} sent nothing"
    for sent in recorder.sent:
        for plan in explain(plans_url, sent, analyze=True):
            found = problems(plan, max_removed)
            assert not found, f"{name}: {found}\n{json.dumps(plan)[:3000]}"


@pytest.mark.parametrize("name, function, call", WRITES, ids=[w[0] for w in WRITES])
def test_a_write_keeps_its_plan_at_size(plans_url, recorder, name, function, call):
    with recorder:  # a transaction, rolled back below: the write is planned here, not kept
        try:
            call(recorder)
        except psycopg2.IntegrityError:  # a refused write (delete_customer: it has orders) was planned too
            pass
        recorder.rollback()
    assert recorder.sent, f"{name} sent nothing"
    for sent in recorder.sent:
        if sent.lstrip().upper().startswith(("BEGIN", "SELECT PG_TRY_ADVISORY")):
            continue
        for plan in explain(plans_url, sent, analyze=False):
            found = problems(plan, None)
            assert not found, f"{name}: {found}\n{json.dumps(plan)[:3000]}"


def test_every_query_function_has_its_plan_guarded():
    """A new query function must be run above (or named in NOT_PLANNED, with the reason)."""
    guarded = {f.__name__ for _, f, *_ in READS + WRITES if f is not None}
    modules = [customers, dashboard, health, orders, products, rollups, queries]
    public = {
        name
        for module in modules
        for name, f in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and f.__module__ == module.__name__
    }
    missing = sorted(public - guarded - set(NOT_PLANNED))
    assert not missing, f"query functions whose plan no test checks at size: {missing} (add them to READS or WRITES)"


def test_the_guard_sees_a_bad_plan(plans_url, recorder):
    """The guard can fail: the search with its indexes and its setting turned off (a scan of the table)
    is caught."""
    customers.list_customers(recorder, 21, None, rare_email())
    settings, bodies = statements(recorder.sent[0])
    conn = admin_connect(plans_url)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        for setting in settings:
            cur.execute(setting)
        cur.execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = on")
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {bodies[0]}")
        plan = cur.fetchone()[0][0]["Plan"]
        cur.execute("ROLLBACK")
    conn.close()
    assert problems(plan, PROBE), json.dumps(plan)[:2000]


def index_scan(plan: dict, index: str) -> dict:
    return next(node for node in plan_nodes(plan) if node.get("Index Name") == index)


def test_a_term_of_common_trigrams_reads_few_of_them(plans_url, recorder):
    """'ada.turing.1': each of its trigrams is in 5-11 % of the customers, the term in a few hundredths
    of a percent. The search asks the local part's index for a few substrings chosen by the trigram
    statistics (schema 018), reading fewer index pages than the whole term's thirteen lists, and the
    rows they give are at most a few times those that match."""
    term = "ada.turing.1"
    customers.list_customers(recorder, 21, CUSTOMERS, term)  # past every id: the index route
    used = index_scan(explain(plans_url, recorder.sent[-1], analyze=True)[0], "customers_email_local_trgm_idx")
    assert f"%{term}%" not in used["Index Cond"], used["Index Cond"]
    conn = admin_connect(plans_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM customers"
                " WHERE split_part(email, '@', 1) ILIKE %s",
                (f"%{term}%",),
            )
            whole = index_scan(cur.fetchone()[0][0]["Plan"], "customers_email_local_trgm_idx")
            cur.execute("SELECT count(*) FROM customers WHERE email ILIKE %s", (f"%{term}%",))
            matches = cur.fetchone()[0]
    finally:
        conn.close()
    pages = {
        side: node["Shared Hit Blocks"] + node["Shared Read Blocks"]
        for side, node in (("used", used), ("whole", whole))
    }
    assert pages["used"] < pages["whole"], (pages, used["Index Cond"])
    assert matches and used["Actual Rows"] <= 4 * matches, (used["Actual Rows"], matches, used["Index Cond"])


def test_the_trigram_statistics_reach_a_role_that_does_not_own_the_tables(plans_url):
    """PostgreSQL shows a table's extended statistics to its owner only: a service role that may only
    read the rows sees none in pg_stats_ext_exprs (the observer), and reads the frequencies through the
    schema's function all the same."""
    from urllib.parse import urlsplit, urlunsplit

    admin = admin_connect(plans_url)
    query(admin, "DROP ROLE IF EXISTS search_reader")
    query(admin, "CREATE ROLE search_reader LOGIN")
    query(admin, "GRANT SELECT ON customers TO search_reader")
    parts = urlsplit(plans_url)
    reader = psycopg2.connect(urlunsplit(parts._replace(netloc="search_reader@" + parts.netloc.split("@")[-1])))
    try:
        owner_sees = query(
            admin, "SELECT count(*) FROM pg_stats_ext_exprs WHERE statistics_name = 'customers_search_trigrams'"
        )
        reader_sees = query(
            reader, "SELECT count(*) FROM pg_stats_ext_exprs WHERE statistics_name = 'customers_search_trigrams'"
        )
        assert (owner_sees, reader_sees) == ([(3,)], [(0,)])
        found = trigrams._read(reader)
        assert set(found) == {"name", "local", "domain"}
        assert found["domain"].of("com") == pytest.approx(1.0)
        assert 0 < found["local"].of("ada") < 0.2
    finally:
        reader.close()
        query(admin, "DROP OWNED BY search_reader")
        query(admin, "DROP ROLE search_reader")
        admin.close()


# A caller bound to one customer (the heavy one) runs the same functions under row-level security
# (schema 020): its policies must not turn a point read into a scan of the customer's orders (the
# order lines' first policy, `order_id IN (SELECT id FROM orders) OR ...`, read all 100 000 of them
# for each page: 38 ms at five million orders, 0.3 ms now).
BOUND_PREFIX = f"SET LOCAL ROLE store_bound;\nSET LOCAL store.customer_id = '{HEAVY}';\n"
BOUND_READS = [
    ("get_customer", lambda c: customers.get_customer(c, HEAVY), 0),
    ("list_customers", lambda c: customers.list_customers(c, 21), 0),
    ("list_customers: term", lambda c: customers.list_customers(c, 21, None, rare_email()), PROBE),
    ("list_customer_orders", lambda c: orders.list_customer_orders(c, HEAVY, 21), 0),
    ("list_customer_orders: deep page", lambda c: orders.list_customer_orders(c, HEAVY, 21, ORDERS - 100), 0),
    ("get_order", lambda c: orders.get_order(c, 10), 0),  # id % 10 == 0: the heavy customer's
]


@pytest.mark.parametrize("name, call, max_removed", BOUND_READS, ids=[r[0] for r in BOUND_READS])
def test_a_bound_callers_read_keeps_its_plan_at_size(plans_url, recorder, name, call, max_removed):
    call(recorder)
    for sent in recorder.sent:
        for plan in explain(plans_url, BOUND_PREFIX + sent, analyze=True):
            found = problems(plan, max_removed)
            assert not found, f"{name}, bound: {found}\n{json.dumps(plan)[:3000]}"
