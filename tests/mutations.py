"""Mutations: each breaks one guarantee in the source, and the test named for it must then fail.

`make mutations` applies them one at a time to a scratch copy of the tree (never to the working
tree), runs the named tests there, and reports any mutation that the tests did not catch ("survived").
Exit code 1 if one survived. Each entry: the guarantee, the file, the exact text replaced, its
replacement, and the pytest node ids that must fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    guarantee: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    also: tuple[tuple[str, str], ...] = ()  # more (old, new) pairs in the same file, for one guarantee


MUTATIONS = [
    Mutation(
        "a read that fails on the replica is run again on the primary",
        "swagger_server/db/replica.py",
        "return isinstance(exc, _RETRY_ON_PRIMARY) and not",
        "return False and not",
        ("tests/test_replica.py::test_a_read_cut_off_mid_query_on_the_replica_is_run_again_on_the_primary",),
    ),
    Mutation(
        "a replica connection that cannot be had (killed, server down) sends the read to the primary",
        "swagger_server/request_scope.py",
        "            replica.failed(exc)\n            return None",
        "            raise",
        ("tests/test_replica.py::test_reads_survive_the_replica_going_down_and_return_to_it",),
    ),
    Mutation(
        "a connection whose rollback fails frees its slot",
        "swagger_server/db/pool.py",
        """        if not self._reset(conn):
            self._forget(conn, "broken on return")
            return""",
        """        if not self._reset(conn):
            return""",
        ("tests/test_pool.py::test_a_connection_whose_rollback_fails_frees_its_slot",),
    ),
    Mutation(
        "min connections are kept however long they idle",
        "swagger_server/db/pool.py",
        "too_idle = now - conn.last_used > conn.max_idle and self._size - len(expired) > self.min_size",
        "too_idle = now - conn.last_used > conn.max_idle",
        ("tests/test_pool.py::test_min_connections_are_kept_warm",),
    ),
    Mutation(
        "lifetimes are jittered per connection",
        "swagger_server/db/pool.py",
        "self.settings.max_lifetime * random.uniform(0.9, 1.0)",
        "self.settings.max_lifetime * 0.95",
        ("tests/test_pool.py::test_lifetime_and_idle_limits_are_jittered_per_connection",),
    ),
    Mutation(
        "a dead idle connection is found by its socket, without a ping",
        "swagger_server/db/pool.py",
        "            if select.select([conn.fileno()], [], [], 0)[0]:\n                return False",
        "            if False:\n                return False",
        ("tests/test_faults.py::test_killed_idle_backends_cost_zero_errors",),
    ),
    Mutation(
        "a hot connection is handed out without a round trip",
        "swagger_server/db/pool.py",
        "if now - conn.last_used > self.settings.check_idle_after:",
        "if True:",
        ("tests/test_faults.py::test_killed_idle_backends_cost_zero_errors",),
    ),
    Mutation(
        "a dead worker's gauges are dropped",
        "gunicorn.conf.py",
        "    multiprocess.mark_process_dead(worker.pid)",
        "    pass",
        ("tests/test_observability.py::test_a_dead_workers_gauges_are_dropped",),
    ),
    Mutation(
        "X-Request-ID is kept up to 128 characters, no more",
        "swagger_server/observability.py",
        '_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\\-]{1,128}$")',
        '_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\\-]{1,256}$")',
        ("tests/test_observability.py::test_request_id_is_generated_when_missing_or_malformed",),
    ),
    Mutation(
        "the access log records the method",
        "swagger_server/observability.py",
        '                    "method": method,',
        '                    "method": "GET",',
        ("tests/test_observability.py::test_metrics_aggregate_every_worker_and_logs_say_one_line_per_request",),
    ),
    Mutation(
        "a role's other connections count against its connection limit",
        "swagger_server/db/budget.py",
        "available = min(available, limit - used - headroom)",
        "available = min(available, limit - headroom)",
        ("tests/test_budget.py::test_a_roles_other_connections_count_against_its_limit",),
    ),
    Mutation(
        "clients hidden from an unprivileged role are still counted",
        "swagger_server/db/budget.py",
        "WHERE COALESCE(backend_type = 'client backend', usename IS NOT NULL AND datname IS NOT NULL)",
        "WHERE backend_type = 'client backend'",
        ("tests/test_budget.py::test_a_role_without_stats_privileges_still_sees_other_roles_clients",),
    ),
    Mutation(
        "a server that refuses the check's connection for want of a slot is a refusal, not a warning",
        "swagger_server/db/budget.py",
        "if any(phrase in str(exc) for phrase in _NO_SLOT):",
        "if False:",
        ("tests/test_budget.py::test_a_role_limit_of_zero_refuses_to_start",),
    ),
    Mutation(
        "a pool counts at most one connection per handler thread",
        "swagger_server/db/budget.py",
        "return min(size, settings.server.threads)",
        "return size",
        ("tests/test_budget.py::test_the_pool_counts_at_most_one_connection_per_handler_thread",),
    ),
    Mutation(
        "headroom is kept behind PgBouncer too",
        "swagger_server/db/budget.py",
        "available = limit - settings.pool.budget_headroom",
        "available = limit",
        ("tests/test_budget.py::test_behind_pgbouncer_the_budget_is_its_client_limit_less_headroom",),
    ),
    Mutation(
        "exactly at the limit fits",
        "swagger_server/db/budget.py",
        "return self.needed <= self.available",
        "return self.needed < self.available",
        ("tests/test_budget.py::test_exactly_at_the_limit_fits_and_one_more_is_refused",),
    ),
    Mutation(
        "a database known to be down fails waiters at once instead of after the pool timeout",
        "swagger_server/db/pool.py",
        """            if self._size == 0:
                self._fail_waiters_locked(""",
        """            if False:
                self._fail_waiters_locked(""",
        ("tests/test_faults_gunicorn.py::test_an_unreachable_database_is_a_503_at_once_over_http",),
        also=(("if self._retry_at > now and self._size == 0:", "if False:"),),
    ),
    Mutation(
        "under CI a skip fails the run",
        "tests/conftest.py",
        "if _ci() and report.skipped",
        "if False and report.skipped",
        ("tests/test_ci.py::test_a_skip_fails_the_run_under_ci",),
    ),
    Mutation(
        "the budget counts other clients",
        "swagger_server/db/budget.py",
        "available = max_conn - reserved - others - headroom",
        "available = max_conn - reserved - headroom",
        ("tests/test_budget.py::test_available_is_max_connections_less_reserved_and_other_clients",),
    ),
    Mutation(
        "errors rendered by Connexion carry CORS headers",
        "swagger_server/app.py",
        """        CORSMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,""",
        """        CORSMiddleware,
        position=MiddlewarePosition.BEFORE_ROUTING,""",
        ("tests/test_api_dashboard_health.py::test_every_error_carries_cors_headers_for_an_allowed_origin",),
    ),
    Mutation(
        "nginx's own 502/504 reach the client as a 503 problem",
        "deploy/nginx/store-api.conf",
        "error_page 502 504 =503 @unavailable;",
        "error_page 502 504 @unavailable;",
        ("tests/test_nginx.py::test_an_api_that_does_not_answer_is_a_503_problem_with_retry_after",),
    ),
    Mutation(
        "a body over the limit is refused by nginx",
        "deploy/nginx/store-api.conf",
        "client_max_body_size 1m;",
        "client_max_body_size 8m;",
        ("tests/test_nginx.py::test_a_body_over_the_limit_is_refused_by_the_proxy",),
    ),
    Mutation(
        "the access log names the forwarded client",
        "swagger_server/observability.py",
        '"client": (scope.get("client") or ("",))[0],',
        '"client": "",',
        ("tests/test_nginx.py::test_traffic_passes_with_the_clients_request_id_and_address",),
    ),
    Mutation(
        "the budget counts this service's other hosts",
        "swagger_server/db/budget.py",
        '{"ours": _like_prefix(f"{APP_PREFIX}{host_label()}:"), "service": _like_prefix(APP_PREFIX)},',
        '{"ours": _like_prefix(APP_PREFIX), "service": _like_prefix(APP_PREFIX)},',
        ("tests/test_budget.py::test_a_second_host_that_would_overflow_the_server_is_refused",),
    ),
]


def run(mutation: Mutation, python: str) -> tuple[bool, float, str]:
    """Apply `mutation` in a scratch copy; True if the tests failed (the mutation was caught)."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        tree = Path(scratch) / "tree"
        shutil.copytree(
            ROOT,
            tree,
            ignore=shutil.ignore_patterns(".venv", ".venv-*", ".git", ".data", "build", "node_modules", ".*cache*"),
        )
        target = tree / mutation.path
        text = target.read_text()
        for old, new in ((mutation.old, mutation.new), *mutation.also):
            if text.count(old) != 1:
                return False, 0.0, f"the text to replace is not in {mutation.path} exactly once: {old[:60]!r}"
            text = text.replace(old, new)
        target.write_text(text)
        began = time.monotonic()
        result = subprocess.run(
            [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        lines = (result.stdout + result.stderr).strip().splitlines()
        summary = [line for line in lines if " passed" in line or " failed" in line or " error" in line]
        return result.returncode == 1, time.monotonic() - began, (summary or lines or [""])[-1]


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or any(a in m.guarantee or a in " ".join(m.tests) for a in argv)]
    survived = 0
    for mutation in chosen:
        caught, seconds, tail = run(mutation, sys.executable)
        survived += not caught
        print(
            f"{'caught  ' if caught else 'SURVIVED'} {seconds:5.1f}s  {mutation.guarantee}\n          {tail}",
            flush=True,
        )
    print(f"{len(chosen) - survived}/{len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
