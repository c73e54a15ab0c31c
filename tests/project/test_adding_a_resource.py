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
from tests.support.database import query

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
    "create_key": "a key is not versioned (api_keys in UNVERSIONED): nothing for If-Match to compare",
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
        "   AND pg_get_constraintdef(k.oid) ~ ('text_is_canonical\\((replace\\()?' || quote_ident(a.attname) || '[),]'))"
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


def _writes_in(source: str, namespace: dict) -> bool:
    """Whether a function's SQL writes or locks rows: its own text, and the module-level strings it
    names (SQL kept in a constant is SQL all the same)."""
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    texts = [source] + [namespace[n] for n in names if isinstance(namespace.get(n), str)]
    return any(_WRITES.search(text) for text in texts)


def _writes(function) -> bool:
    return _writes_in(textwrap.dedent(inspect.getsource(function)), vars(inspect.getmodule(function)))


def _writing_queries() -> dict[object, str]:
    """Every query function whose SQL writes or locks rows -> `module.function`."""
    found = {}
    for file in Path(inspect.getfile(importlib.import_module("swagger_server.db.queries"))).parent.glob("*.py"):
        module = importlib.import_module(f"swagger_server.db.queries.{file.stem}")
        for name, function in vars(module).items():
            if inspect.isfunction(function) and function.__module__ == module.__name__ and _writes(function):
                found[function] = f"{file.stem}.{name}"
    return found


def _resolve(expr: ast.expr, namespace: dict):
    """What a call's function is in the module's namespace (a name, or attributes of one), or None:
    a query imported under another name (`keys as queries`, `create_key as issue`) is the same function."""
    if isinstance(expr, ast.Name):
        found = namespace.get(expr.id)
    elif isinstance(expr, ast.Attribute):
        owner = _resolve(expr.value, namespace)
        found = vars(owner).get(expr.attr) if inspect.ismodule(owner) else None
    else:
        return None
    # Modules and functions only: a name may be a proxy (flask's `request`) that must not be touched here.
    return found if inspect.ismodule(found) or inspect.isfunction(found) else None


def _outside_transactions(source: str, entry: str, writes: dict, namespace: dict) -> list[str]:
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
            target = _resolve(node.func, namespace)
            if not inside and target in writes:
                offenders.append(f"{where}:{node.lineno} {name} ({writes[target]})")
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
    green. Locks (FOR UPDATE / FOR KEY SHARE) outside one hold nothing. A query is known by what it
    is, not by the name it was imported under; its SQL by its text, in the function or in a constant."""
    writes = _writing_queries()
    assert {"orders.insert_order", "customers.create_customer", "products.update_product"} <= set(writes.values())
    offenders = []
    for _path, method, op in operations():
        if method != "get":
            module = importlib.import_module(op["x-openapi-router-controller"])
            offenders += _outside_transactions(inspect.getsource(module), op["operationId"], writes, vars(module))
    assert offenders == [], "wrap each in `with transaction(conn):` (db/connection.py)"
    from swagger_server.db.queries import customers, orders

    trap = textwrap.dedent(
        """
        def create_supplier(body):
            conn = get_conn()
            row = customers.create_customer(conn, body["name"], body["email"])
            with transaction(conn):
                _helper(conn)
            _helper(conn)
            q.create_customer(conn, "a", "b")
            make(conn, "a", "b")

        def _helper(conn):
            orders.insert_order(conn, 1, [])
        """
    )
    namespace = {"customers": customers, "orders": orders, "q": customers, "make": customers.create_customer}
    assert _outside_transactions(trap, "create_supplier", writes, namespace) == [
        "create_supplier:4 customers.create_customer (customers.create_customer)",
        "_helper:12 orders.insert_order (orders.insert_order)",
        "create_supplier:8 q.create_customer (customers.create_customer)",
        "create_supplier:9 make (customers.create_customer)",
    ]
    # SQL in a module-level constant is read as SQL.
    query_source = "def create_supplier(conn, name):\n    conn.cursor().execute(INSERT_SUPPLIER, (name,))\n"
    assert not _writes_in(query_source, {})
    assert _writes_in(query_source, {"INSERT_SUPPLIER": "INSERT INTO suppliers (name) VALUES (%s)"})


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


# Creates whose body cannot collide with a row, and why.
NO_CONFLICT = {"create_key": "the key is made by the server: nothing the caller sends is unique"}


def _undeclared(path: str, method: str, op: dict) -> list[str]:
    """What a resource operation's spec leaves out, each with what to add. Every status the layers in
    front of a handler can answer (the contract fuzzer fails an undocumented one only when it happens to
    reach it): 400 always, 401 and 403 where a token is needed or a write, 429 (rate limits), 503
    (pool), 413/415 with a body, 404 with a path parameter (a missing row, or a missing parent of a
    list), 409 on a create (a unique key). Every 2xx names the RateLimit headers the server sends; a 201
    its Location, ETag and X-Consistency-Token; a change's 2xx its X-Consistency-Token."""
    name, responses = op["operationId"], op["responses"]
    wanted = {"400", "429", "503"}
    if op.get("security", SPEC.get("security")):
        wanted.add("401")
    if method != "get":
        wanted |= {"401", "403"}
    if "requestBody" in op:
        wanted |= {"413", "415"}
    if "{" in path:
        wanted.add("404")
    if method == "post" and "201" in responses and name not in NO_CONFLICT:
        wanted.add("409")
    missing = [f"response {code}" for code in sorted(wanted - set(responses))]
    for code, response in sorted(responses.items()):
        if not code.startswith("2"):
            continue
        headers = set(response.get("headers", {}))
        needed = {"RateLimit-Policy", "RateLimit"}
        if code == "201":
            needed |= {"Location", "X-Consistency-Token"} | ({"ETag"} if name not in NO_ETAG else set())
        if method in ("patch", "put", "delete"):
            needed.add("X-Consistency-Token")
        missing += [f"header {h} on {code}" for h in sorted(needed - headers)]
    return [f"{method.upper()} {path} ({name}) lacks {what}" for what in missing]


@pytest.mark.parametrize("path,method,op", [o for o in operations() if o[2]["operationId"] not in NOT_RESOURCES])
def test_every_resource_operation_lists_its_failures_and_headers(path, method, op):
    """See _undeclared: a create without its 409, a get without its 404, a 200 without the RateLimit
    fields, a 201 without Location/ETag/X-Consistency-Token passed every test before."""
    assert _undeclared(path, method, op) == [], "add each to the operation in swagger/swagger.yaml"


def test_an_operation_without_its_failures_and_headers_is_named():
    created = {"201": {"headers": {"RateLimit": {}, "RateLimit-Policy": {}, "Location": {}}}}
    create = {"operationId": "create_supplier", "requestBody": {}, "responses": {"400": {}, "201": created["201"]}}
    assert _undeclared("/suppliers", "post", create) == [
        f"POST /suppliers (create_supplier) lacks {what}"
        for what in (
            "response 401",
            "response 403",
            "response 409",
            "response 413",
            "response 415",
            "response 429",
            "response 503",
            "header ETag on 201",
            "header X-Consistency-Token on 201",
        )
    ]
    get = {"operationId": "get_supplier", "responses": {"200": {}, "400": {}, "401": {}, "429": {}, "503": {}}}
    assert _undeclared("/suppliers/{supplier_id}", "get", get) == [
        "GET /suppliers/{supplier_id} (get_supplier) lacks response 404",
        "GET /suppliers/{supplier_id} (get_supplier) lacks header RateLimit on 200",
        "GET /suppliers/{supplier_id} (get_supplier) lacks header RateLimit-Policy on 200",
    ]


# -- behaviour every resource owes, called on every operation of the spec ----------------------------

ADMIN = "admin:resource-rules-admin"
# How to make a row that each DELETE may remove (a new DELETE fails below until it is added here).
MAKERS = {
    "delete_customer": ("customer_id", "/api/customers", {"name": "To Delete", "email": "to.delete@example.com"}),
    "revoke_key": ("key_id", "/api/keys", {"scopes": ["read"]}),
}


@pytest.fixture
def admin_client(database_url):
    from swagger_server import create_app, get_database
    from tests.support.database import make_settings

    app = create_app(make_settings(database_url, api={"tokens": ("test-token", ADMIN)}))
    with app.test_client(headers={"Authorization": f"Bearer {ADMIN.split(':', 1)[1]}"}) as client:
        yield client
    get_database(app).close(timeout=2)


def _found_for_missing_rows(client) -> list[str]:
    """Every GET with a path parameter, called for ids no row has: those not answering a 404 problem
    naming the id."""
    wrong = []
    for path, method, op in operations():
        if method != "get" or "{" not in path or op["operationId"] in NOT_RESOURCES:
            continue
        url = "/api" + re.sub(r"\{[^}]+\}", "999999", path)
        answer = client.get(url)
        problem = answer.headers["Content-Type"] == "application/problem+json" and "999999" in answer.json()["detail"]
        if answer.status_code != 404 or not problem:
            wrong.append(f"GET {url}: {answer.status_code} (raise NotFound when the row or its parent is missing)")
    return wrong


def test_every_get_of_a_missing_row_or_under_a_missing_parent_is_404(admin_client, store):
    """A list under a missing parent answering `200 []` passed every test: a client cannot tell "no
    orders" from "no such customer". Every GET with a path parameter, called for ids no row has, is
    404 with a problem naming what is missing."""
    assert _found_for_missing_rows(admin_client) == []


def test_a_list_under_a_missing_parent_answering_200_is_named(database_url, store, monkeypatch):
    """The check above can fail: the customers' orders listed without the parent's check are named."""
    from swagger_server import create_app, get_database
    from swagger_server.controllers import customers
    from swagger_server.controllers.conditional import answer_page
    from swagger_server.controllers.reply import page
    from swagger_server.db.queries import orders
    from swagger_server.request_scope import get_conn, read_only
    from tests.support.database import make_settings

    @read_only
    def list_customer_orders(customer_id: int, limit: int = 20, after: int | None = None):
        return answer_page(page(orders.list_customer_orders(get_conn(), customer_id, limit + 1, after), limit))

    monkeypatch.setattr(customers, "list_customer_orders", list_customer_orders)
    app = create_app(make_settings(database_url))
    try:
        with app.test_client(headers={"Authorization": "Bearer test-token"}) as client:
            assert _found_for_missing_rows(client) == [
                "GET /api/customers/999999/orders: 200 (raise NotFound when the row or its parent is missing)"
            ]
    finally:
        get_database(app).close(timeout=2)


def _deletes_ignoring_if_match(client) -> list[str]:
    """Every DELETE of the spec on a row made for it: those that do not answer a stale If-Match with
    412 and leave the row (deleting it without a condition then succeeds: 204, where a 412 that had
    deleted it would leave 404)."""
    wrong = []
    for path, method, op in operations():
        if method != "delete":
            continue
        name = op["operationId"]
        assert name in MAKERS, f"{name}: add how to make a row it may delete to MAKERS"
        param, collection, body = MAKERS[name]
        made = client.post(collection, json=body)
        assert made.status_code == 201, made.json()
        url = "/api" + path.replace("{" + param + "}", str(made.json()["id"]))
        stale = client.delete(url, headers={"If-Match": '"stale-0"'}).status_code
        after = client.delete(url).status_code
        if (stale, after) != (412, 204):
            wrong.append(f"DELETE {url} with a stale If-Match: {stale}, then without: {after} (use write_condition())")
    return wrong


def test_every_delete_refuses_a_stale_if_match_and_leaves_the_row(admin_client, store):
    """A DELETE that ignores If-Match deletes what the client did not see, with every test green."""
    assert _deletes_ignoring_if_match(admin_client) == []


def test_a_delete_ignoring_if_match_is_named(database_url, store, monkeypatch):
    """The check above can fail: a customer deleted whatever its If-Match is named."""
    from swagger_server import create_app, get_database
    from swagger_server.controllers import customers
    from swagger_server.controllers.reply import no_content
    from swagger_server.db.connection import transaction
    from swagger_server.db.queries import ANY
    from swagger_server.db.queries import customers as queries
    from swagger_server.request_scope import get_conn
    from tests.support.database import make_settings

    def delete_customer(customer_id: int):
        conn = get_conn()
        with transaction(conn):
            queries.delete_customer(conn, customer_id, ANY)
        return no_content()

    monkeypatch.setattr(customers, "delete_customer", delete_customer)
    app = create_app(make_settings(database_url, api={"tokens": ("test-token", ADMIN)}))
    try:
        with app.test_client(headers={"Authorization": f"Bearer {ADMIN.split(':', 1)[1]}"}) as client:
            assert [line.split(":")[0] for line in _deletes_ignoring_if_match(client)] == [
                "DELETE /api/customers/4 with a stale If-Match"
            ]
    finally:
        get_database(app).close(timeout=2)
