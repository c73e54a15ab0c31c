"""The layering the README describes: `swagger_server/db/` depends on nothing above it, the pool
imports without Flask or Connexion, and `[POOL] mode` is decided in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB = ROOT / "swagger_server" / "db"
ABOVE = (
    "flask",
    "connexion",
    "starlette",
    "a2wsgi",  # swagger_server/pipeline/handlers.py builds its WSGI environ with a2wsgi
    "uvicorn",
    "swagger_server.errors",
    "swagger_server.controllers",
    "swagger_server.app",
    "swagger_server.request_scope",
    "swagger_server.observability",
    "swagger_server.security",
)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_database_layer_imports_nothing_above_it():
    for path in DB.rglob("*.py"):
        wrong = {name for name in imports(path) if name.startswith(ABOVE)}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_pool_imports_without_flask_or_connexion():
    code = (
        "import sys; sys.modules['flask'] = sys.modules['connexion'] = sys.modules['starlette'] = None; "
        "import swagger_server.db.pool, swagger_server.db.null_pool, swagger_server.db.database, "
        "swagger_server.db.replica, swagger_server.db.budget; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_pool_mode_is_decided_in_one_place():
    """Only db/database.py (pool_class) compares `[POOL] mode` (its rule, one_of in settings.py, validates it)."""
    readers = []
    for path in (ROOT / "swagger_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "mode" for side in [node.left, *node.comparators]
            ):
                readers.append(str(path.relative_to(ROOT)))
    assert set(readers) == {"swagger_server/db/database.py"}, readers


def test_every_operation_id_resolves_and_a_missing_one_is_named():
    from swagger_server.app import load_spec, unresolved_operations

    spec = load_spec()
    assert unresolved_operations(spec) == []
    spec["paths"]["/customers"]["get"]["operationId"] = "list_the_customers"
    assert unresolved_operations(spec) == [
        "GET /customers: operationId 'list_the_customers' has no function "
        "swagger_server.controllers.customers.list_the_customers"
    ]


def _pool_uses(path: Path) -> tuple[list[str], set[str]]:
    """In `path`: the private members of a pool it touches (`pool._x`, `self.pool._x`) and the names of
    the pool's members it reads."""
    private, used = [], set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("pool", "self.pool"):
            used.add(node.attr)
            if node.attr.startswith("_"):
                private.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return private, used


def test_only_the_pool_touches_its_own_state():
    """psycopg_pool's way: the connector and the maintenance ticker call pool methods; nothing but
    db/pool.py reads or assigns a private field of the pool (the connector used to assign ten)."""
    offenders = []
    for path in (ROOT / "swagger_server").rglob("*.py"):
        if path != DB / "pool.py":
            offenders += _pool_uses(path)[0]
    assert not offenders, offenders


def test_the_pool_helpers_use_a_handful_of_its_methods():
    """The connector and the maintenance ticker reach the pool through a few verbs, each a whole step
    (claim a request, report a failure, hand over a connection, one maintenance pass), plus the
    pool's configuration (name, dsn, settings, timeouts, configure)."""
    config = {"name", "dsn", "settings", "connect_timeout", "configure", "closed"}
    verbs = set()
    for helper in ("connector.py", "maintenance.py"):
        verbs |= _pool_uses(DB / helper)[1] - config
    assert verbs == {
        "wait_for_connect_request",
        "wants_connection",
        "sleep",
        "connect_failed",
        "connect_finished",
        "maintain",
    }


def test_the_app_state_has_one_home():
    """The key of the app's state (flask_app.extensions) and of each request's context (the ASGI
    scope's extensions) is spelled once, in swagger_server/state.py; nothing else reads
    `.extensions[...]` or `.config[...]` of an app by string."""
    key, readers = [], []
    for path in (ROOT / "swagger_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and node.value == "store_api":
                key.append(where)
            if (
                path.name != "state.py"
                and isinstance(node, ast.Subscript | ast.Call)
                and isinstance(target := node.value if isinstance(node, ast.Subscript) else node.func, ast.Attribute)
                and (
                    target.attr in ("extensions", "config")
                    or (target.attr == "get" and ast.unparse(target.value).endswith((".extensions", ".config")))
                )
                and "scope" not in ast.unparse(target)
            ):
                readers.append(f"{where} {ast.unparse(node)}")
    assert [where.rsplit(":", 1)[0] for where in key] == ["swagger_server/state.py"], key
    assert not readers, readers


def test_one_place_renders_every_error():
    """problems.py renders every problem (its type, title and content type) for the Connexion and the
    raw ASGI paths alike; the layers that answer before Connexion (the gate, the handler threads, the
    rate limiter, the HTTP protocol) ask it for the bytes instead of writing their own, and no module
    keeps a table of reason phrases beside http.HTTPStatus."""
    from http import HTTPStatus

    offenders = []
    for path in (ROOT / "swagger_server").rglob("*.py"):
        if path.name == "problems.py" and path.parent.name == "swagger_server":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and (
                node.value in ("application/problem+json", b"application/problem+json")
                or (isinstance(node.value, str) and node.value.startswith("/api/problems/"))
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("Too Large"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} a title: {node.value!r}")
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant)
                and isinstance(v, ast.Constant)
                and k.value in {s.value for s in HTTPStatus}
                and v.value == HTTPStatus(k.value).phrase
                for k, v in zip(node.keys, node.values, strict=True)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} a table of reason phrases")
    assert not offenders, offenders


def _imports_of_tests(source: str) -> list[str]:
    """The modules of tests/ a test module imports, other than tests/support (and tests/mutations.py,
    the mutation runner that test_ci drives)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found += [n for n in names if n.startswith("tests") and not n.startswith(("tests.support", "tests.mutations"))]
    return found


def test_no_test_module_imports_another_or_the_conftest():
    """Helpers shared by tests live in tests/support; a test module importing another's helpers (or the
    conftest's) ties their fates: moving one test broke another."""
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in (ROOT / "tests").rglob("test_*.py")
        if (found := _imports_of_tests(path.read_text()))
    }
    assert offenders == {}, "move what they share to tests/support"
    assert _imports_of_tests("from tests.pipeline.test_http_layer import send\nimport tests.conftest") == [
        "tests.pipeline.test_http_layer",
        "tests.conftest",
    ]


def test_the_code_tells_what_is_and_why_and_leaves_its_history_to_the_changelog():
    """Docstrings and comments that carry history ("(issue 29)", "it used to", "a list missed ...")
    drift from the code they describe; the CHANGELOG keeps the history."""
    history = re.compile(r"\(issue \d+\)|\bissue \d+\b|\bit used to\b|\bused to (be|do|say)\b|\ba list missed\b", re.I)
    offenders = []
    for path in [*(ROOT / "swagger_server").rglob("*.py"), ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if history.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "say what is and why; the history goes in CHANGELOG.md"
    assert history.search("Two rules keep one caller out (issue 29):") and history.search("it used to exit")
