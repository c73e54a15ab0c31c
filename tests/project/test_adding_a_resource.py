"""Adding a resource, guarded: each trap a new resource fell into (docs/ADDING_AN_ENDPOINT.md) is a
failing test here, read from the spec, the controllers and PostgreSQL's catalogue rather than from
lists someone must remember to extend. Each check also proves, on a made-up offender, that it can
fail."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import psycopg2
import pytest

from swagger_server.app import load_spec
from swagger_server.db import catalogue
from tests.conftest import query

SPEC = load_spec()
METHODS = ("get", "put", "post", "patch", "delete")

# Operations that are not a resource's, with why each is exempt from the resource rules below.
NOT_RESOURCES = {
    "get_health": "a probe: answered without the database, never conditional (a 304 to a probe is a lie)",
    "get_ready": "a probe: checks the primary itself; a replica saying ready would be wrong",
    "get_db_health": "the pool's own numbers, per process: on the primary's pool by definition",
    "test_db": "a round trip to the primary, by definition",
}
NO_ETAG = {
    "get_dashboard": "an aggregate over many rows: no one version to name (it evaluates If-Match: *)",
    "list_keys": "credentials, never cached (no-store); a key's last use moves without a version",
}
# Tables with no version of their own, and why.
UNVERSIONED = {
    "order_lines": "part of its order: written once with it, never changed; the order's version names it",
    "idempotency_keys": "the service's memory of retried POSTs, never served as a resource",
    "sales_days": "a rollup of orders (db/rollups.py): derived, never served as a resource",
    "sales_product_days": "a rollup of order lines: derived, never served as a resource",
    "sales_product_months": "a rollup of order lines: derived, never served as a resource",
    "sales_rollup_dirty": "the days a rollup must redo: the roller's work list",
    "sales_rollup_state": "the roller's watermark",
    "api_keys": "credentials: issued and revoked, never changed under an If-Match (changed_at tells the workers)",
}


def operations():
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def handler(operation):
    return getattr(importlib.import_module(operation["x-openapi-router-controller"]), operation["operationId"])


def parameter_names(operation) -> set[str]:
    return {p["$ref"].rsplit("/", 1)[1] if "$ref" in p else p["name"] for p in operation.get("parameters", [])}


# -- the catalogue: every table emptied, every table versioned ---------------------------------------


def test_the_store_fixture_and_db_seed_reset_empty_every_table_of_the_catalogue(database_url, store):
    """A table a migration adds is emptied too, by name from pg_class (the hand-kept list missed one
    and leaked its rows from the direct run into the PgBouncer run: 409)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE suppliers_probe (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)")
            cur.execute("INSERT INTO suppliers_probe DEFAULT VALUES")
        emptied = catalogue.truncate_store(conn)
        assert "suppliers_probe" in emptied and "schema_migrations" not in emptied
        assert {"customers", "products", "orders", "order_lines", "idempotency_keys"} <= set(emptied)
        assert query(conn, "SELECT count(*) FROM suppliers_probe") == [(0,)]
        assert query(conn, "SELECT count(*) FROM customers") == [(0,)]
    finally:
        conn.rollback()  # the probe table never existed for anyone else
        conn.close()
    assert query(store, "SELECT count(*) FROM customers") == [(3,)]
    assert query(store, "SELECT count(*) FROM schema_migrations")[0][0] > 0


def _unversioned(conn) -> list[str]:
    """Tables (but the exempt) without a `version` column bumped by bump_row_version() on UPDATE."""
    rows = query(
        conn,
        "SELECT c.relname,"
        " EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'version' AND NOT a.attisdropped),"
        " EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = c.oid"
        "         AND NOT t.tgisinternal AND p.proname = 'bump_row_version' AND t.tgtype & 2 = 2 AND t.tgtype & 16 = 16)"
        " FROM pg_class c WHERE c.relname = ANY(%s) ORDER BY 1",
        (catalogue.store_tables(conn),),
    )
    return [name for name, column, trigger in rows if name not in UNVERSIONED and not (column and trigger)]


def test_every_table_has_its_version_column_and_trigger(database_url, store):
    """A row's version is its ETag and the If-Match of its changes (controllers/conditional.py): a table
    without the trigger answers 304 for a row that has changed."""
    assert _unversioned(store) == []
    conn = psycopg2.connect(database_url)
    try:
        query(conn, "CREATE TABLE suppliers_probe (id bigint PRIMARY KEY, version bigint NOT NULL DEFAULT 1)")
        assert _unversioned(conn) == ["suppliers_probe"]  # a column without its trigger is caught
        query(
            conn, "CREATE TRIGGER v BEFORE UPDATE ON suppliers_probe FOR EACH ROW EXECUTE FUNCTION bump_row_version()"
        )
        assert _unversioned(conn) == []
    finally:
        conn.rollback()
        conn.close()


# Text columns no client writes as free text, and why they need no text_is_canonical() check.
NOT_FREE_TEXT = {
    "orders.status": "one of three words, by its own CHECK",
    "idempotency_keys.client": "a token's subject, from the configuration",
    "idempotency_keys.key": "a header, compared byte for byte (its own spec pattern)",
    "idempotency_keys.request_hash": "a SHA-256 in hex, made by the service",
    "sales_rollup_state.name": "the rollup's name, a constant of the code (queries/rollups.py)",
    "api_keys.id": "12 characters of base32, made by the service, by its own CHECK",
}


def _uncanonical_text(conn) -> list[str]:
    """text/varchar columns of the store's tables that no CHECK holds to text_is_canonical()
    (005_text_identity.sql: one identity per text, the same rule as the API's)."""
    rows = query(
        conn,
        "SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " AND a.atttypid IN ('text'::regtype, 'varchar'::regtype)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c'"
        "   AND pg_get_constraintdef(k.oid) ~ ('text_is_canonical\\(' || quote_ident(a.attname) || '\\)'))"
        " ORDER BY 1",
        (catalogue.store_tables(conn),),
    )
    return [name for (name,) in rows if name not in NOT_FREE_TEXT]


def test_every_text_column_holds_the_text_rule(database_url, store):
    """The API refuses text that is not canonical (text.py); the database holds every stored text to
    the same rule, so nothing written another way (psql, a script) reads differently."""
    assert _uncanonical_text(store) == []
    conn = psycopg2.connect(database_url)
    try:
        query(conn, "CREATE TABLE suppliers_probe (id bigint PRIMARY KEY, name text NOT NULL)")
        assert _uncanonical_text(conn) == ["suppliers_probe.name"]
        query(conn, "ALTER TABLE suppliers_probe ADD CHECK (text_is_canonical(name))")
        assert _uncanonical_text(conn) == []
    finally:
        conn.rollback()
        conn.close()


# -- the controllers: reads marked, writes in a transaction ------------------------------------------


def _unmarked_reads(ops) -> list[str]:
    return [
        f"GET {path} ({op['operationId']})"
        for path, method, op in ops
        if method == "get" and op["operationId"] not in NOT_RESOURCES and not getattr(handler(op), "read_only", False)
    ]


def test_every_get_handler_is_read_only_or_says_why_not():
    """A GET handler without @read_only is sent to the primary with every test green: the replica
    never serves it. Each exception is in NOT_RESOURCES with its reason."""
    assert _unmarked_reads(operations()) == []
    unmarked = {"operationId": "create_customer", "x-openapi-router-controller": "swagger_server.controllers.customers"}
    assert _unmarked_reads([("/suppliers", "get", unmarked)]) == ["GET /suppliers (create_customer)"]


_WRITES = re.compile(
    r"\b(INSERT\s+INTO|UPDATE\s+\w+(\s+\w+)?\s+SET|DELETE\s+FROM|FOR\s+(NO\s+KEY\s+|KEY\s+)?(UPDATE|SHARE))\b"
)


def _writing_queries() -> set[str]:
    """`module.function` of every query function whose SQL writes or locks rows."""
    found = set()
    for file in Path(inspect.getfile(importlib.import_module("swagger_server.db.queries"))).parent.glob("*.py"):
        source = file.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and _WRITES.search(ast.get_source_segment(source, node)):
                found.add(f"{file.stem}.{node.name}")
    return found


def _outside_transactions(source: str, entry: str, writes: set[str]) -> list[str]:
    """Calls of a writing query reachable from function `entry` of `source` and not lexically inside
    `with transaction(...)` (helpers of the same module followed, inside or out)."""
    functions = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    offenders: list[str] = []
    seen: set[tuple[str, bool]] = set()

    def visit(node, inside: bool, where: str):
        if isinstance(node, ast.With) and any(
            isinstance(i.context_expr, ast.Call) and ast.unparse(i.context_expr.func).endswith("transaction")
            for i in node.items
        ):
            inside = True
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in writes and not inside:
                offenders.append(f"{where}:{node.lineno} {name}")
            if name in functions and (name, inside) not in seen:
                seen.add((name, inside))
                for child in functions[name].body:
                    visit(child, inside, name)
        for child in ast.iter_child_nodes(node):
            visit(child, inside, where)

    for child in functions[entry].body:
        visit(child, False, entry)
    return offenders


def test_every_write_runs_in_a_transaction():
    """A write outside `with transaction(conn)` commits on its own (autocommit) and returns no
    X-Consistency-Token: a client reading its write from the replica may not see it, with every test
    green. Locks (FOR UPDATE / FOR KEY SHARE) outside one hold nothing."""
    writes = _writing_queries()
    assert {"orders.insert_order", "customers.create_customer", "products.update_product"} <= writes
    offenders = []
    for _path, method, op in operations():
        if method != "get":
            module = importlib.import_module(op["x-openapi-router-controller"])
            offenders += _outside_transactions(inspect.getsource(module), op["operationId"], writes)
    assert offenders == []
    trap = textwrap.dedent(
        """
        def create_supplier(body):
            conn = get_conn()
            row = customers.create_customer(conn, body["name"], body["email"])
            with transaction(conn):
                _helper(conn)
            _helper(conn)

        def _helper(conn):
            orders.insert_order(conn, 1, [])
        """
    )
    assert _outside_transactions(trap, "create_supplier", writes) == [
        "create_supplier:4 customers.create_customer",
        "_helper:10 orders.insert_order",
    ]


# -- the spec: conditional requests declared -------------------------------------------------------


def _undeclared_conditions(ops) -> list[str]:
    missing = []
    for path, method, op in ops:
        name = op["operationId"]
        if name in NOT_RESOURCES:
            continue
        params, responses = parameter_names(op), op["responses"]
        if method == "get":
            if "IfNoneMatch" not in params or "304" not in responses:
                missing.append(f"GET {path}: If-None-Match and 304")
            if name not in NO_ETAG and "ETag" not in responses.get("200", {}).get("headers", {}):
                missing.append(f"GET {path}: the 200's ETag header")
        if method in ("patch", "put", "delete") and ("IfMatch" not in params or "412" not in responses):
            missing.append(f"{method.upper()} {path}: If-Match and 412")
        if "IfMatch" in params and "412" not in responses:
            missing.append(f"{method.upper()} {path}: 412")
    return missing


def test_every_resource_operation_declares_its_conditions():
    """Leaving out If-None-Match, the ETag header or 304 from a new resource's spec changed no test:
    clients generated from the spec would never revalidate. Every read of a resource declares them,
    every change If-Match and 412."""
    assert _undeclared_conditions(operations()) == []
    bare = {"operationId": "list_suppliers", "parameters": [], "responses": {"200": {"description": "ok"}}}
    assert _undeclared_conditions([("/suppliers", "get", bare)]) == [
        "GET /suppliers: If-None-Match and 304",
        "GET /suppliers: the 200's ETag header",
    ]


@pytest.mark.parametrize("path,method,op", [o for o in operations() if o[2]["operationId"] not in NOT_RESOURCES])
def test_every_resource_operation_lists_its_failures(path, method, op):
    """Every status the layers in front of a handler can answer is in the spec (the contract fuzzer
    fails an undocumented one only when it happens to reach it): 400 always, 401 and 403 where a token
    is needed or a write, 429 (rate limits), 503 (pool), 413/415 with a body."""
    responses = set(op["responses"])
    wanted = {"400", "429", "503"}
    if op.get("security", SPEC.get("security")):
        wanted.add("401")
    if method != "get":
        wanted |= {"401", "403"}
    if "requestBody" in op:
        wanted |= {"413", "415"}
    assert wanted <= responses, f"{method.upper()} {path} lacks {sorted(wanted - responses)}"
