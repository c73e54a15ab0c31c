"""Every refusal counted by its cause: store_api_problems_total{operation, kind}, kind the end of the
problem's `type` (problems.PROBLEM_KINDS, a bounded set), so that a statement timeout, an overload and
a schema behind the code, or a rate limit and a concurrency limit, are told apart."""

from __future__ import annotations

import ast
from pathlib import Path

from swagger_server import create_app, get_database
from swagger_server.problems import KIND_OF_STATUS, PROBLEM_KINDS
from swagger_server.state import of_flask
from tests.support.auth import AUTH
from tests.support.database import make_settings

ROOT = Path(__file__).resolve().parents[2]


def kinds_in_the_code() -> set[str]:
    """The problem kinds the code names: `kind=` arguments, `kind = ...` (alone or in a tuple), the
    first of the (kind, detail) pairs errors.py maps exceptions to, and problems.response()'s third
    argument; and the kinds problems.py gives a status."""
    found = set(KIND_OF_STATUS.values())
    for path in (ROOT / "swagger_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                found |= {k.value.value for k in node.keywords if k.arg == "kind" and isinstance(k.value, ast.Constant)}
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name == "response" and len(node.args) >= 3 and isinstance(node.args[2], ast.Constant):
                    found.add(node.args[2].value)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "kind" and isinstance(node.value, ast.Constant):
                        found.add(node.value.value)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for t, v in zip(target.elts, node.value.elts, strict=False):
                            if isinstance(t, ast.Name) and t.id == "kind" and isinstance(v, ast.Constant):
                                found.add(v.value)
                    if isinstance(target, ast.Name) and target.id == "kinds" and isinstance(node.value, ast.Dict):
                        for pair in node.value.values:
                            if isinstance(pair, ast.Tuple) and isinstance(pair.elts[0], ast.Constant):
                                found.add(pair.elts[0].value)
    return {k for k in found if isinstance(k, str)}


def test_every_kind_the_code_answers_with_is_a_label_value():
    used = kinds_in_the_code()
    # The observer: it sees the kinds of every layer (HTTP, handler threads, rate limit, pool, schema).
    assert {"overloaded", "too-many-concurrent", "rate-limited", "pool-exhausted", "schema-behind"} <= used
    assert {"statement-timeout", "insufficient-stock", "conflict", "not-found", "bad-request"} <= used
    assert used <= PROBLEM_KINDS, (
        f"kinds not in problems.PROBLEM_KINDS (they would count as other): {used - PROBLEM_KINDS}"
    )


def problems(app) -> dict[tuple[str, str], float]:
    registry = of_flask(app.app).metrics.registry
    return {
        (s.labels["operation"], s.labels["kind"]): s.value
        for metric in registry.collect()
        if metric.name == "store_api_problems"
        for s in metric.samples
        if s.name == "store_api_problems_total"
    }


def test_a_refusal_is_counted_by_its_kind_and_a_success_is_not(database_url, store):
    app = create_app(make_settings(database_url, api={"rate_limit": "4/minute"}))
    try:
        with app.test_client() as client:
            assert client.get("/api/customers/1", headers=AUTH).status_code == 200
            assert client.get("/api/customers/999999", headers=AUTH).status_code == 404
            assert client.get("/api/customers/x", headers=AUTH).status_code == 400
            assert client.get("/api/customers/1").status_code == 401
            statuses = [client.get("/api/customers/1", headers=AUTH).status_code for _ in range(3)]
        assert statuses[-1] == 429, statuses
        counted = problems(app)
        assert counted[("get_customer", "not-found")] == 1
        assert counted[("get_customer", "bad-request")] == 1
        assert counted[("get_customer", "unauthorized")] == 1
        assert counted[("get_customer", "rate-limited")] == statuses.count(429)
        assert sum(counted.values()) == 3 + statuses.count(429), counted  # the 200s are not problems
    finally:
        get_database(app).close()
