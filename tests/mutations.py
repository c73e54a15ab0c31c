"""Mutations: each breaks one guarantee in the source, and the test named for it must then fail.

`make mutations` applies them one at a time to a scratch copy of the tree (never to the working
tree), runs the named tests there, and reports any mutation that the tests did not catch ("survived").
Exit code 1 if one survived. Each entry: the guarantee, the file, the exact text replaced, its
replacement, and the pytest node ids that must fail.
"""

from __future__ import annotations

import os
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
    # more (old, new) pairs in the same file, or (path, old, new) in another, for one guarantee
    also: tuple[tuple[str, ...], ...] = ()


MUTATIONS = [
    Mutation(
        "a read that fails on the replica is run again on the primary",
        "swagger_server/db/replica.py",
        "return isinstance(exc, _RETRY_ON_PRIMARY) and not",
        "return False and not",
        ("tests/db/test_replica.py::test_a_read_cut_off_mid_query_on_the_replica_is_run_again_on_the_primary",),
    ),
    Mutation(
        "a read cancelled on the replica by a migration's replayed lock (conflict with recovery) is run again on the primary",
        "swagger_server/db/replica.py",
        "and not isinstance(exc, psycopg2.errors.QueryCanceled)",
        "and not isinstance(exc, (psycopg2.errors.QueryCanceled, psycopg2.errors.SerializationFailure))",
        (
            "tests/db/test_replica.py::test_a_migrations_lock_replayed_on_the_replica_sends_the_cancelled_reads_to_the_primary",
        ),
    ),
    Mutation(
        "a replica connection that cannot be had (killed, server down) sends the read to the primary",
        "swagger_server/request_scope.py",
        "            replica.failed(exc)\n            return None",
        "            raise",
        ("tests/db/test_replica.py::test_reads_survive_the_replica_going_down_and_return_to_it",),
    ),
    Mutation(
        "a connection whose rollback fails frees its slot",
        "swagger_server/db/pool.py",
        """        if not self._reset(conn):
            self._forget(conn, "broken on return")
            return""",
        """        if not self._reset(conn):
            return""",
        ("tests/db/test_pool.py::test_a_connection_whose_rollback_fails_frees_its_slot",),
    ),
    Mutation(
        "min connections are kept however long they idle",
        "swagger_server/db/pool.py",
        "too_idle = now - conn.last_used > conn.max_idle and self._size - len(expired) > self.min_size",
        "too_idle = now - conn.last_used > conn.max_idle",
        ("tests/db/test_pool.py::test_min_connections_are_kept_warm",),
    ),
    Mutation(
        "lifetimes are jittered per connection",
        "swagger_server/db/connector.py",
        "settings.max_lifetime * random.uniform(0.9, 1.0)",
        "settings.max_lifetime * 0.95",
        ("tests/db/test_pool.py::test_lifetime_and_idle_limits_are_jittered_per_connection",),
    ),
    Mutation(
        "a dead idle connection is found by its socket, without a ping",
        "swagger_server/db/pool.py",
        "            if select.select([conn.fileno()], [], [], 0)[0]:\n                return False",
        "            if False:\n                return False",
        ("tests/db/test_faults.py::test_killed_idle_backends_cost_zero_errors",),
    ),
    Mutation(
        "a hot connection is handed out without a round trip",
        "swagger_server/db/pool.py",
        "if now - conn.last_used > self.settings.check_idle_after:",
        "if True:",
        ("tests/db/test_faults.py::test_killed_idle_backends_cost_zero_errors",),
    ),
    Mutation(
        "a dead worker's gauges are dropped",
        "gunicorn.conf.py",
        "    multiprocess.mark_process_dead(worker.pid)",
        "    pass",
        ("tests/observability/test_observability.py::test_a_dead_workers_gauges_are_dropped",),
    ),
    Mutation(
        "X-Request-ID is kept up to 128 characters, no more",
        "swagger_server/observability/middleware.py",
        '_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\\-]{1,128}$")',
        '_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\\-]{1,256}$")',
        ("tests/observability/test_observability.py::test_request_id_is_generated_when_missing_or_malformed",),
    ),
    Mutation(
        "the access log records the method",
        "swagger_server/observability/middleware.py",
        '                    "method": method,',
        '                    "method": "GET",',
        (
            "tests/observability/test_observability.py::test_metrics_aggregate_every_worker_and_logs_say_one_line_per_request",
        ),
    ),
    Mutation(
        "a role's other connections count against its connection limit",
        "swagger_server/db/budget.py",
        "available = min(available, limit - used - headroom)",
        "available = min(available, limit - headroom)",
        ("tests/db/test_budget.py::test_a_roles_other_connections_count_against_its_limit",),
    ),
    Mutation(
        "clients hidden from an unprivileged role are still counted",
        "swagger_server/db/budget.py",
        "WHERE COALESCE(backend_type = 'client backend', usename IS NOT NULL AND datname IS NOT NULL)",
        "WHERE backend_type = 'client backend'",
        ("tests/db/test_budget.py::test_a_role_without_stats_privileges_still_sees_other_roles_clients",),
    ),
    Mutation(
        "a server that refuses the check's connection for want of a slot is a refusal, not a warning",
        "swagger_server/db/budget.py",
        "if any(phrase in str(exc) for phrase in _NO_SLOT):",
        "if False:",
        ("tests/db/test_budget.py::test_a_role_limit_of_zero_refuses_to_start",),
    ),
    Mutation(
        "a pool counts at most one connection per handler thread",
        "swagger_server/db/budget.py",
        "return min(size, settings.server.threads)",
        "return size",
        ("tests/db/test_budget.py::test_the_pool_counts_at_most_one_connection_per_handler_thread",),
    ),
    Mutation(
        "headroom is kept behind PgBouncer too",
        "swagger_server/db/budget.py",
        "available = limit - settings.pool.budget_headroom",
        "available = limit",
        ("tests/db/test_budget.py::test_behind_pgbouncer_the_budget_is_its_client_limit_less_headroom",),
    ),
    Mutation(
        "exactly at the limit fits",
        "swagger_server/db/budget.py",
        "return self.needed <= self.available",
        "return self.needed < self.available",
        ("tests/db/test_budget.py::test_exactly_at_the_limit_fits_and_one_more_is_refused",),
    ),
    Mutation(
        "a database known to be down fails waiters at once instead of after the pool timeout",
        "swagger_server/db/pool.py",
        """            if self._size == 0:
                self._fail_waiters_locked(""",
        """            if False:
                self._fail_waiters_locked(""",
        ("tests/deploy/test_faults_gunicorn.py::test_an_unreachable_database_is_a_503_at_once_over_http",),
        also=(("swagger_server/db/pool.py", "if self._retry_at > now and self._size == 0:", "if False:"),),
    ),
    Mutation(
        "under CI a skip fails the run",
        "tests/conftest.py",
        "if _ci() and report.skipped",
        "if False and report.skipped",
        ("tests/project/test_ci.py::test_a_skip_fails_the_run_under_ci",),
    ),
    Mutation(
        "the budget counts other clients",
        "swagger_server/db/budget.py",
        "available = max_conn - reserved - others - headroom",
        "available = max_conn - reserved - headroom",
        ("tests/db/test_budget.py::test_available_is_max_connections_less_reserved_and_other_clients",),
    ),
    Mutation(
        "errors rendered by Connexion carry CORS headers",
        "swagger_server/pipeline/__init__.py",
        """        ProblemCORS,
        position=MiddlewarePosition.BEFORE_EXCEPTION,""",
        """        ProblemCORS,
        position=MiddlewarePosition.BEFORE_ROUTING,""",
        ("tests/controllers/test_dashboard_health.py::test_every_error_carries_cors_headers_for_an_allowed_origin",),
    ),
    Mutation(
        "nginx's own 502/504 reach the client as a 503 problem",
        "deploy/nginx/store-api.conf",
        "error_page 502 504 =503 @unavailable;",
        "error_page 502 504 @unavailable;",
        ("tests/deploy/test_nginx.py::test_an_api_that_does_not_answer_is_a_503_problem_with_retry_after",),
    ),
    Mutation(
        "a body over the limit is refused by nginx",
        "deploy/nginx/store-api.conf",
        "client_max_body_size 1m;",
        "client_max_body_size 8m;",
        ("tests/deploy/test_nginx.py::test_a_body_over_the_limit_is_refused_by_the_proxy",),
    ),
    Mutation(
        "the access log names the forwarded client",
        "swagger_server/observability/middleware.py",
        '"client": (scope.get("client") or ("",))[0],',
        '"client": "",',
        ("tests/deploy/test_nginx.py::test_traffic_passes_with_the_clients_request_id_and_address",),
    ),
    Mutation(
        "the budget counts this service's other hosts",
        "swagger_server/db/budget.py",
        '{"ours": _like_prefix(f"{APP_PREFIX}{host_label()}:"), "service": _like_prefix(APP_PREFIX)},',
        '{"ours": _like_prefix(APP_PREFIX), "service": _like_prefix(APP_PREFIX)},',
        ("tests/db/test_budget.py::test_a_second_host_that_would_overflow_the_server_is_refused",),
    ),
    # -- issue 19: the HTTP layer ------------------------------------------------------------------
    Mutation(
        "a header that must be single and appears twice is refused",
        "swagger_server/pipeline/gate.py",
        "                if name in single:\n",
        "                if False:\n",
        (
            "tests/pipeline/test_http_layer.py::test_a_header_that_must_be_single_and_appears_twice_is_400_and_the_connection_closed[same-Idempotency-Key]",
        ),
    ),
    Mutation(
        "every reader sees the one canonical media type",
        "swagger_server/pipeline/gate.py",
        'headers.append((b"content-type", media_type.encode()))',
        'headers.append((b"content-type", content_type))',
        (
            "tests/pipeline/test_http_layer.py::test_every_spelling_of_json_validates_exactly_like_application_json[Application/JSON]",
        ),
    ),
    Mutation(
        "a header spelt with an underscore is read by nobody",
        "swagger_server/pipeline/gate.py",
        '            if b"_" in name:\n                continue',
        "            if False:\n                continue",
        ("tests/pipeline/test_http_layer.py::test_a_header_spelt_with_underscore_is_read_by_nobody",),
    ),
    Mutation(
        "a stalled body is cut with 408 at the body timeout",
        "swagger_server/pipeline/gate.py",
        "async with asyncio.timeout_at(deadline):",
        "async with asyncio.timeout_at(None):",
        ("tests/pipeline/test_http_layer.py::test_a_stalled_body_gets_408_within_its_timeout_and_is_closed",),
    ),
    Mutation(
        "the body is read whole before any handler thread is taken",
        "swagger_server/pipeline/handlers.py",
        """        body = await _read_body(scope, receive)
        if not await self._admit(loop, caller):""",
        """        if not await self._admit(loop, caller):""",
        ("tests/pipeline/test_http_layer.py::test_a_hundred_stalled_bodies_hold_no_thread_and_readiness_stays_fast",),
        # Two defences: the gate reads the body first, and the handler bridge takes it before a thread.
        # Here the bridge reads it after admission, and the gate passes it through unread, as the
        # receive channel it came on.
        also=(
            (
                "        try:\n            environ = build_environ(scope, io.BytesIO(body))",
                "        try:\n            body = await _read_body(scope, receive)\n            environ = build_environ(scope, io.BytesIO(body))",
            ),
            (
                "swagger_server/pipeline/gate.py",
                "            body = await self._read_body(receive, send)\n",
                '            body = b""\n',
            ),
            (
                "swagger_server/pipeline/gate.py",
                '        headers.append((b"content-length", str(len(body)).encode()))\n'
                '        await self.app({**scope, "headers": headers}, _replay(body, receive), send)',
                '        headers += [(k, v) for k, v in scope["headers"] if k in (b"content-length", b"transfer-encoding")]\n'
                '        await self.app({**scope, "headers": headers}, receive, send)',
            ),
        ),
    ),
    Mutation(
        "a stalled head is cut with 408 at the head timeout",
        "swagger_server/serving/protocol.py",
        "self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_expired)",
        "self._head_timer = None",
        ("tests/pipeline/test_http_layer.py::test_a_stalled_head_gets_408_within_its_timeout_and_is_closed",),
    ),
    Mutation(
        "the head limit counts the head only, not a body in the same read",
        "swagger_server/serving/protocol.py",
        "if in_head and self._in_head and not self._head_completed:",
        "if in_head and self._in_head:",
        (
            "tests/pipeline/test_http_layer.py::test_a_body_of_tens_of_kib_in_one_write_is_not_mistaken_for_a_large_head",
        ),
    ),
    Mutation(
        "a head that arrives whole in one read is still held to the head limit",
        "swagger_server/serving/protocol.py",
        '        if self._head_size + len(self.url) > self.limits.max_header_bytes:\n            raise _Refused(431, f"the request head may',
        '        if False:\n            raise _Refused(431, f"the request head may',
        (
            "tests/pipeline/test_http_layer.py::test_a_body_of_tens_of_kib_in_one_write_is_not_mistaken_for_a_large_head",
        ),
    ),
    Mutation(
        "patterns are ECMA-262 (no trailing newline passes a $)",
        "swagger_server/validation.py",
        'EcmaRequestValidator = validators.extend(Draft4RequestValidator, {"pattern": _ecma_pattern})',
        "EcmaRequestValidator = Draft4RequestValidator",
        ("tests/pipeline/test_edges.py::test_body_patterns_are_ecma_262_even_where_the_text_rule_would_also_refuse",),
    ),
    Mutation(
        "numbers in the query are ASCII digits",
        "swagger_server/validation.py",
        '            if kind in ("integer", "number"):',
        "            if False:",
        ("tests/pipeline/test_http_layer.py::test_mixed_encodings_are_a_short_4xx[Arabic digits in the query]",),
    ),
    Mutation(
        "a path or query that is not UTF-8 once decoded is refused",
        "swagger_server/pipeline/gate.py",
        'if b"%" in part and not _utf8(unquote_to_bytes(part.replace(b"+", b" "))):',
        "if False:",
        ("tests/pipeline/test_http_layer.py::test_mixed_encodings_are_a_short_4xx[query not UTF-8]",),
    ),
    Mutation(
        "integrity errors are a 4xx in one place",
        "swagger_server/errors.py",
        "    answer = integrity_problem(exc, retry_after(_request))\n",
        "    answer = None\n",
        ("tests/controllers/test_races.py::test_two_creates_with_one_email",),
    ),
    Mutation(
        "the handler gets the validated body, not a second parse",
        "swagger_server/patches.py",
        '            request._body = read["body"]',
        "            pass",
        ("tests/pipeline/test_one_reading.py::test_the_handler_gets_the_validated_body_not_a_second_parse",),
    ),
    Mutation(
        "the handler gets the validated query, not a second parse",
        "swagger_server/patches.py",
        '            request._query_params = read["query"]',
        "            pass",
        ("tests/pipeline/test_one_reading.py::test_the_handler_gets_the_validated_query_not_a_second_parse",),
    ),
    Mutation(
        "a product's merged lines are held to the per-line maximum",
        "swagger_server/controllers/orders.py",
        'if wanted[line["product_id"]] > MAX_QUANTITY:',
        "if False:",
        ("tests/pipeline/test_one_reading.py::test_the_merged_quantity_limit_is_the_specs_line_maximum",),
    ),
    Mutation(
        "a refused CORS preflight is a problem",
        "swagger_server/pipeline/gate.py",
        "        if response.status_code < 400:\n",
        "        if True:\n",
        ("tests/pipeline/test_http_layer.py::test_a_refused_cors_preflight_is_a_problem",),
    ),
    Mutation(
        "no Location is built from the client's Host (trailing slash)",
        "swagger_server/pipeline/gate.py",
        'if path.endswith("/") and path != "/" and not path.startswith("/api/ui/"):',
        "if False:",
        (
            "tests/pipeline/test_http_layer.py::test_redirects_and_unknown_paths_are_problems_with_a_path_only_location[/api/customers/-404]",
        ),
        # Two defences: the gate's 404, and no Router redirecting slashes (patches.py, patch 4).
        also=(
            (
                "swagger_server/patches.py",
                "        init(self, *args, redirect_slashes=False, **kwargs)",
                "        init(self, *args, redirect_slashes=redirect_slashes, **kwargs)",
            ),
        ),
    ),
    Mutation(
        "a client that goes away is recorded 499, not 500",
        "swagger_server/observability/middleware.py",
        "        status = 499\n",
        "        status = 500\n",
        ("tests/pipeline/test_http_layer.py::test_a_client_that_closes_early_is_logged_499_and_never_500",),
    ),
    Mutation(
        "requests refused by the HTTP layer are counted in /metrics",
        "swagger_server/serving/protocol.py",
        "        else:\n            self._record_refusal(status, self.client)",
        "        else:\n            pass",
        ("tests/pipeline/test_http_layer.py",),
    ),
    Mutation(
        "a client gone with pipelined requests in flight leaves no traceback",
        "swagger_server/serving/protocol.py",
        "        for cycle in self._cycles:\n            if not cycle.response_complete:",
        "        for cycle in ():\n            if not cycle.response_complete:",
        (
            "tests/pipeline/test_http_layer.py::test_a_client_gone_with_pipelined_requests_in_flight_leaves_no_traceback",
        ),
    ),
    Mutation(
        "a refusal is sent after the answers to earlier pipelined requests",
        "swagger_server/serving/protocol.py",
        "            return  # an earlier request is still being answered: on_response_complete calls again",
        "            pass",
        ("tests/pipeline/test_http_fuzz.py",),
    ),
    Mutation(
        "the spec is rendered once per process",
        "swagger_server/pipeline/rendered.py",
        "        entry = self.cache.get(key)\n",
        "        entry = None\n",
        ("tests/pipeline/test_http_layer.py::test_the_spec_is_rendered_once_and_a_flood_of_it_leaves_health_fast",),
    ),
    # -- issue 22: conditional requests ---------------------------------------------------------------
    Mutation(
        "If-Match is checked in the write's own statement (a stale ETag writes nothing)",
        "swagger_server/db/queries/products.py",
        " AND (%(versions)s::bigint[] IS NULL OR version = ANY(%(versions)s))",
        " AND (%(versions)s::bigint[] IS NULL OR TRUE)",
        ("tests/controllers/test_races.py::test_eight_writers_holding_one_etag_exactly_one_wins",),
    ),
    Mutation(
        "every change of a row changes its ETag (the version trigger)",
        "swagger_server/db/schema/003_row_versions.sql",
        "CREATE TRIGGER products_version BEFORE UPDATE",
        "CREATE TRIGGER products_version BEFORE DELETE",
        (
            "tests/controllers/test_conditional.py::test_a_product_has_a_strong_etag_that_changes_with_every_change_of_its_row",
        ),
    ),
    Mutation(
        "a matching If-None-Match is 304",
        "swagger_server/controllers/conditional.py",
        "            matched = exists and tag is not None and _weak_match(tags, tag)",
        "            matched = False",
        ("tests/controllers/test_conditional.py::test_if_none_match_that_matches_is_304_with_the_etag_and_no_body",),
    ),
    Mutation(
        "a replica behind the client's ETag never answers with an older row",
        "swagger_server/controllers/conditional.py",
        "            if seen and max(seen) > version:",
        "            if False:",
        ("tests/db/test_replica.py::test_a_replica_behind_the_clients_etag_never_answers_with_an_older_row",),
    ),
    Mutation(
        "require_if_match makes changes without If-Match 428",
        "swagger_server/controllers/conditional.py",
        "        if app_state.current().settings.api.require_if_match:",
        "        if False:",
        ("tests/controllers/test_conditional.py::test_require_if_match_makes_changes_without_it_428",),
    ),
    Mutation(
        "If-Match uses the strong comparison (a weak tag never matches)",
        "swagger_server/controllers/conditional.py",
        "_versions([(weak, opaque) for weak, opaque in tags if not weak])",
        "_versions(tags)",
        ("tests/controllers/test_conditional.py::test_if_match_uses_the_strong_comparison",),
    ),
    Mutation(
        "access log writes are whole lines of at most PIPE_BUF bytes (workers' lines never mix)",
        "swagger_server/observability/logs.py",
        "    PIPE_BUF = select.PIPE_BUF",
        "    PIPE_BUF = 1 << 30",
        ("tests/pipeline/test_handlers.py::test_log_writes_are_whole_lines_of_at_most_pipe_buf_bytes",),
    ),
    Mutation(
        "a path Connexion does not route is never served by Flask",
        "swagger_server/patches.py",
        '            raise NotFound("no such resource: " + excerpt(flask.request.path, 80)) from None',
        "            routed = None",
        ("tests/controllers/test_request_connections.py::test_rejected_requests_take_no_connection",),
    ),
    Mutation(
        "[API] retry_after reaches the pool-exhausted 503",
        "swagger_server/errors.py",
        'return {"Retry-After": str(max(known or 0, configured))}',
        'return {"Retry-After": str(known or 1)}',
        (
            "tests/controllers/test_request_connections.py::test_exhausted_pool_answers_503_with_retry_after_after_the_timeout",
        ),
    ),
    Mutation(
        "the admission timeout is its own setting",
        "swagger_server/pipeline/__init__.py",
        "timeout=api.admission_timeout,",
        "timeout=settings.pool.timeout,",
        ("tests/db/test_faults.py::test_requests_beyond_the_handler_threads_wait_boundedly_then_get_503",),
    ),
    Mutation(
        "gunicorn's control socket is in its run directory, not the user's home",
        "gunicorn.conf.py",
        'control_socket = os.path.join(_run_dir, "gunicorn.ctl")',
        "pass",
        ("tests/project/test_docs.py::test_make_run_with_your_own_database_changes_nothing_unless_asked",),
    ),
    Mutation(
        "make run leaves your own database alone unless asked",
        "scripts/run.py",
        'if pg is not None or env.get("SETUP_DB") == "1":',
        "if True:",
        ("tests/project/test_docs.py::test_make_run_with_your_own_database_changes_nothing_unless_asked",),
    ),
    Mutation(
        "db seed sizes scale with --customers",
        "swagger_server/__main__.py",
        "orders = args.orders if args.orders is not None else args.customers * 10",
        "orders = args.orders if args.orders is not None else 100_000",
        ("tests/project/test_docs.py::test_make_lint_and_the_cli_commands_of_the_readme",),
    ),
    Mutation(
        "serve logs one line per request",
        "swagger_server/__main__.py",
        "access_log=False)",
        "access_log=True)",
        ("tests/project/test_docs.py::test_serve_logs_one_line_per_request",),
    ),
    Mutation(
        "each app has its own tokens",
        "swagger_server/security.py",
        "    return state.tokens.check(token, needed)",
        "    return _first.setdefault('tokens', state.tokens).check(token, needed)\n\n\n_first: dict = {}",
        ("tests/project/test_two_apps.py::test_two_apps_in_one_process_share_nothing",),
    ),
    Mutation(
        "nginx passes the trace context on",
        "deploy/nginx/store-api.conf",
        "proxy_set_header traceparent $http_traceparent;",
        'proxy_set_header traceparent "";',
        ("tests/deploy/test_nginx.py::test_the_trace_context_passes_through_and_nginx_logs_it",),
    ),
    Mutation(
        "a request's server span continues the caller's trace",
        "swagger_server/observability/tracing.py",
        "        parent = propagate.extract(headers, getter=HEADERS)",
        "        parent = None",
        ("tests/observability/test_tracing.py::test_a_request_with_a_traceparent_continues_the_callers_trace",),
    ),
    Mutation(
        "statements are spans without their parameters' values",
        "swagger_server/db/connection.py",
        "text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)",
        "text = cursor.mogrify(query, vars).decode()",
        ("tests/observability/test_tracing.py::test_a_request_with_a_traceparent_continues_the_callers_trace",),
    ),
    Mutation(
        "a migration waits for a lock at most [MIGRATE] lock_timeout, then yields to traffic",
        "swagger_server/db/migrate.py",
        "(_ms(timeouts.lock_timeout), _ms(timeouts.statement_timeout))",
        '("0", _ms(timeouts.statement_timeout))',
        (
            "tests/deploy/test_upgrades.py::test_a_migration_behind_a_long_reader_never_piles_traffic_up",
            "tests/db/test_migrate.py::test_a_file_waiting_for_a_lock_yields_to_traffic_and_is_applied_once_the_reader_ends",
        ),
    ),
    Mutation(
        "a re-run drops the invalid index a failed concurrent build left",
        "swagger_server/db/migrate.py",
        "        _drop_invalid(cur, file)  # left by an earlier failed build",
        "        pass  # left by an earlier failed build",
        ("tests/db/test_migrate.py::test_a_failed_concurrent_build_leaves_no_invalid_index_and_a_rerun_builds_it",),
    ),
    Mutation(
        "a no-transaction file holds one statement that traffic never waits behind",
        "swagger_server/db/migrate.py",
        'if ";" in body or not _CONCURRENT.match(body):',
        "if False:",
        ("tests/db/test_migrate.py::test_a_no_transaction_file_must_hold_one_statement_traffic_never_waits_behind",),
    ),
    Mutation(
        "every schema file passes squawk, or waives a rule with a reason",
        "swagger_server/db/schema/004_orders_drop_idempotency_columns.sql",
        "-- squawk-ignore ban-drop-column\n",
        "",
        ("tests/db/test_migrate.py::test_squawk_passes_every_schema_file_and_would_catch_a_blocking_one",),
    ),
    Mutation(
        "a database behind this code's schema is a 503 naming db upgrade, never a 500",
        "swagger_server/db/database.py",
        "        if self._schema_missing:\n            raise SchemaBehind(self._schema_missing)",
        "        pass",
        (
            "tests/db/test_schema_version.py::test_a_database_without_this_codes_schema_is_a_503_naming_db_upgrade_never_a_500",
        ),
    ),
    Mutation(
        "kill -HUP serves the code on disk",
        "gunicorn.conf.py",
        "        del sys.modules[_name]  # the code on disk, not the last import of it",
        "        pass",
        ("tests/deploy/test_reload.py::test_sighup_serves_the_new_code_and_spec_and_no_request_fails",),
    ),
    Mutation(
        "liveness and readiness run in a lane of their own, never behind API work",
        "swagger_server/pipeline/__init__.py",
        "        probes=probes,\n        on_loop=on_loop,\n    )",
        "        probes=frozenset(),\n        on_loop=on_loop,\n    )",
        # (Not the flood test: there a caller's share already leaves the probes a thread.)
        ("tests/pipeline/test_handlers.py::test_probes_never_wait_behind_api_work",),
    ),
    Mutation(
        "a caller holds at most its share of a worker's handler threads",
        "swagger_server/pipeline/handlers.py",
        "self.cap = max(1, int(threads * caller_share))",
        "self.cap = threads",
        (
            "tests/pipeline/test_fair_share.py::test_one_tokens_dashboard_flood_leaves_the_probes_and_other_callers_served",
            "tests/pipeline/test_handlers.py::test_one_caller_holds_at_most_its_share_and_the_other_threads_stay_for_the_others",
        ),
    ),
    Mutation(
        "nginx limits each client address's request rate",
        "deploy/nginx/store-api.conf",
        "    limit_req zone=store_api_rate burst=100 nodelay;\n",
        "",
        ("tests/deploy/test_nginx.py::test_one_address_past_its_rate_gets_429_problems_from_nginx",),
    ),
    Mutation(
        "with redis:// every worker of every host counts one quota",
        "swagger_server/pipeline/ratelimit.py",
        "        return uri\n",
        '        return "memory://"\n',
        (
            "tests/pipeline/test_ratelimit_redis.py::test_two_hosts_sharing_redis_serve_a_token_one_quota_and_leave_others_alone",
        ),
    ),
    Mutation(
        "a rate limit storage that fails lets requests through (fail open), never a 5xx",
        "swagger_server/pipeline/fleet.py",
        "            except Exception as exc:  # noqa: BLE001 - any failure of the storage: fail open, said once\n                self._failed(exc, connection)",
        "            except Exception as exc:  # noqa: BLE001 - any failure of the storage: fail open, said once\n                raise",
        ("tests/pipeline/test_ratelimit_redis.py::test_redis_killed_under_load_fails_open_then_limits_again",),
    ),
    Mutation(
        "the fleet limit's deadline measures Redis, not the event loop: a busy loop is not a slow storage",
        "swagger_server/pipeline/fleet.py",
        "        self._queue.put((KEY_PREFIX + caller, cost, future, loop))\n        return await future",
        "        self._queue.put((KEY_PREFIX + caller, cost, future, loop))\n        started = loop.time()\n"
        "        verdict = await future\n        return None if loop.time() - started > self.wait else verdict",
        ("tests/pipeline/test_ratelimit_redis.py::test_a_busy_event_loop_is_not_a_slow_storage",),
    ),
    Mutation(
        "a request costs one round trip to Redis",
        "swagger_server/pipeline/fleet.py",
        "            replies = [connection.read_response() for _ in batch]",
        "            replies = [connection.read_response() for _ in batch]\n"
        "            connection.send_packed_command(connection.pack_commands(commands))\n"
        "            [connection.read_response() for _ in batch]",
        ("tests/pipeline/test_ratelimit_redis.py::test_a_request_costs_one_round_trip_to_redis",),
    ),
    Mutation(
        "the outage log says one true thing per outage per worker",
        "swagger_server/pipeline/fleet.py",
        "        if self.down_since is None:\n            self.down_since = now",
        "        if True:\n            self.down_since = now",
        ("tests/pipeline/test_ratelimit_redis.py::test_redis_killed_under_load_fails_open_then_limits_again",),
    ),
    Mutation(
        "a request refused as invalid counts against its caller (the limit runs before validation)",
        "swagger_server/pipeline/routing.py",
        "            if after_security is not None:\n                stack.append(after_security)\n    return stack",
        "    if after_security is not None:  # innermost: after validation\n"
        "        stack.append(after_security)\n    return stack",
        ("tests/pipeline/test_ratelimit.py::test_a_request_refused_as_invalid_counts_against_its_caller",),
    ),
    Mutation(
        "a body longer than any valid one is refused by its length, unparsed",
        "swagger_server/validation.py",
        "        if most is not None and len(raw) > most:",
        "        if False:",
        (
            "tests/pipeline/test_bounded_validation.py::test_a_body_longer_than_any_valid_one_is_refused_by_its_length_before_it_is_parsed",
        ),
    ),
    Mutation(
        "a body is parsed and validated off the event loop",
        "swagger_server/validation.py",
        "        body = await asyncio.to_thread(self._read, raw)",
        "        body = self._read(raw)",
        ("tests/pipeline/test_ratelimit.py::test_a_body_is_read_off_the_event_loop",),
    ),
    Mutation(
        "every limited answer carries RateLimit-Policy and RateLimit, errors too",
        "swagger_server/observability/middleware.py",
        '                extra = [header, *context.get("ratelimit", ())]',
        "                extra = [header]",
        ("tests/pipeline/test_ratelimit.py::test_each_answer_says_the_policy_and_what_is_left_and_past_it_429",),
    ),
    Mutation(
        "the dashboard costs a unit per 31 days of its range (its spec's x-rate-cost)",
        "swagger_server/pipeline/ratelimit.py",
        "        return max(1, min(math.ceil(((end - start).days + 1) / per), most))",
        "        return 1",
        ("tests/pipeline/test_ratelimit.py::test_each_answer_says_the_policy_and_what_is_left_and_past_it_429",),
    ),
    Mutation(
        "the dashboard runs under a statement timeout of its own",
        "swagger_server/db/queries/dashboard.py",
        "SET LOCAL statement_timeout = %(timeout)s;\n",
        "",
        ("tests/pipeline/test_ratelimit.py::test_the_dashboard_has_a_statement_timeout_of_its_own",),
        also=(("swagger_server/db/queries/dashboard.py", '"timeout": int(timeout_ms),', ""),),
    ),
    Mutation(
        "a statement timeout promises no retry (no Retry-After) and is counted by operation",
        "swagger_server/errors.py",
        '            "statement-timeout",\n        )',
        '            "statement-timeout",\n            headers=retry_after(_request),\n        )',
        ("tests/pipeline/test_ratelimit.py::test_the_dashboard_has_a_statement_timeout_of_its_own",),
    ),
    Mutation(
        "the roller waits for the orders in flight, so no order below its watermark is skipped",
        "swagger_server/db/queries/rollups.py",
        " LOCK TABLE orders IN SHARE MODE;",
        "",
        ("tests/db/test_rollups.py::test_the_roller_waits_for_orders_in_flight_and_skips_none",),
    ),
    Mutation(
        "one roller at a time: every order is counted once",
        "swagger_server/db/queries/rollups.py",
        'cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_ID,))',
        'cur.execute("SELECT true", ())',
        ("tests/db/test_rollups.py::test_two_rollers_at_once_count_every_order_once",),
    ),
    Mutation(
        "the tail's and dirty days' lines are read by the primary key, not by hashing every order line",
        "swagger_server/db/queries/dashboard.py",
        "WHERE order_id = r.id OFFSET 0) l",
        "WHERE order_id = r.id) l",
        ("tests/db/test_plans.py::test_a_read_keeps_its_plan_at_size",),
    ),
    Mutation(
        "a search term the trigram index cannot serve is refused, after NFC too",
        "swagger_server/db/queries/customers.py",
        "    return _TRIGRAM.search(term) is not None",
        "    return True",
        ("tests/controllers/test_customers.py::test_a_search_the_index_cannot_serve_is_refused_naming_q",),
    ),
    Mutation(
        "a kept dashboard report is served for max_age seconds, no longer",
        "swagger_server/reports.py",
        "self._clock() - kept.made < self.max_age",
        "True",
        ("tests/controllers/test_dashboard_reports.py::test_a_kept_report_expires_at_max_age",),
    ),
    Mutation(
        "a key stored before keys had a client (002's copy) is recognised for the same order",
        "swagger_server/db/queries/orders.py",
        " AND (client = %(client)s OR (client = '' AND request_hash = %(hash)s))",
        " AND client = %(client)s AND %(hash)s IS NOT NULL",
        ("tests/deploy/test_upgrades.py::test_a_key_stored_before_keys_had_a_client_is_recognised_for_the_same_order",),
    ),
    Mutation(
        "a client's Idempotency-Key is recognised across a release boundary",
        "swagger_server/controllers/orders.py",
        'client = context["token_info"]["sub"]',
        'client = "v2:" + context["token_info"]["sub"]',
        ("tests/deploy/test_upgrades.py::test_a_rolling_upgrade_under_load_loses_nothing_and_doubles_nothing",),
    ),
    # -- issue 30: the edges beside the schema --------------------------------------------------------------
    Mutation(
        "chunked trailer fields never become request headers",
        "swagger_server/serving/protocol.py",
        "            return\n        super().on_header(name, value)",
        "        super().on_header(name, value)",
        ("tests/pipeline/test_edges.py::test_an_authorization_trailer_never_authenticates",),
    ),
    Mutation(
        "the bytes of a chunked body that are not body (framing, trailers) are bounded as they arrive",
        "swagger_server/serving/protocol.py",
        "            if self._framing > self.limits.max_header_bytes + CHUNK_FRAMING * self._chunks:",
        "            if False:",
        ("tests/pipeline/test_edges.py::test_trailers_and_framing_over_the_head_limit_are_431_with_bounded_memory",),
    ),
    Mutation(
        "a protocol upgrade is refused with a 400 problem",
        "swagger_server/serving/protocol.py",
        "        if self.parser.should_upgrade():\n            raise _Refused(400,",
        "        if False:\n            raise _Refused(400,",
        ("tests/pipeline/test_edges.py::test_a_protocol_upgrade_is_a_400_problem_and_the_connection_closed",),
    ),
    Mutation(
        "/api answers the same way for every method",
        "swagger_server/pipeline/gate.py",
        "        if path in REDIRECTS:  # the same answer for every method",
        '        if path in REDIRECTS and method in ("GET", "HEAD"):',
        ("tests/pipeline/test_edges.py::test_the_api_base_answers_the_same_way_for_every_method",),
    ),
    Mutation(
        "a tag names a version only in its canonical ASCII form (opaque strong comparison)",
        "swagger_server/controllers/conditional.py",
        "    return [int(opaque) for _, opaque in tags if _VERSION.fullmatch(opaque)]",
        "    return [int(opaque) for _, opaque in tags if opaque.isdigit() and len(opaque) <= 18]",
        ("tests/pipeline/test_edges.py::test_if_match_is_an_opaque_strong_comparison",),
    ),
    Mutation(
        "If-None-Match on a PATCH or DELETE that matches is 412 and writes nothing",
        "swagger_server/controllers/conditional.py",
        "    return WriteCondition(allowed, _versions(tags), star)",
        "    return ANY if allowed is None else WriteCondition(allowed)",
        ("tests/pipeline/test_edges.py::test_if_none_match_on_a_change_that_matches_is_412_and_nothing_is_written",),
    ),
    Mutation(
        "HEAD answers exactly as GET",
        "swagger_server/controllers/conditional.py",
        'READS = frozenset(("GET", "HEAD"))',
        'READS = frozenset(("GET",))',
        ("tests/pipeline/test_edges.py::test_head_answers_exactly_as_get",),
    ),
    Mutation(
        "If-Match is evaluated first, on reads too (RFC 9110 §13.2.2)",
        "swagger_server/controllers/conditional.py",
        '            raise PreconditionFailed("If-Match names no current version of this resource", field="If-Match")',
        "            pass",
        ("tests/pipeline/test_edges.py::test_the_precedence_of_rfc_9110_13_2_2",),
    ),
    Mutation(
        "a create evaluates its conditions against the collection",
        "swagger_server/controllers/customers.py",
        "    evaluate(lambda: page_etag(page(customers.list_customers(conn, 21, None, None), 20)))",
        "    pass",
        ("tests/pipeline/test_edges.py::test_conditions_on_creates_are_evaluated_against_the_collection",),
    ),
    Mutation(
        "the dashboard evaluates conditions against its report's weak ETag",
        "swagger_server/controllers/dashboard.py",
        "    early = evaluate(tag)",
        "    early = None",
        ("tests/pipeline/test_edges.py::test_the_dashboard_evaluates_conditions_against_its_weak_etag",),
    ),
    Mutation(
        "text with format, control or separator characters or surrounding whitespace is refused naming the field",
        "swagger_server/text.py",
        "    reason = refusal(value, lines)\n",
        "    reason = None\n",
        (
            "tests/pipeline/test_edges.py::test_a_sku_that_looks_like_another_is_refused_naming_the_field",
            "tests/pipeline/test_edges.py::test_a_customer_name_with_invisible_or_breaking_characters_is_refused",
        ),
    ),
    Mutation(
        "a body's text is normalised to NFC",
        "swagger_server/text.py",
        "    value = canonical(value, lines)\n",
        "    value = value\n",
        ("tests/pipeline/test_edges.py::test_a_sku_is_ascii_and_a_name_in_another_normal_form_is_the_same_name",),
    ),
    Mutation(
        "a search in NFD finds what was stored in NFC",
        "swagger_server/controllers/customers.py",
        "term = None if q is None else canonical(q)",
        "term = q",
        ("tests/pipeline/test_edges.py::test_search_finds_the_nfc_and_the_nfd_form_of_a_name",),
    ),
    Mutation(
        "the database holds every text column to the same rule",
        "swagger_server/db/schema/021_text_identity_unicode_16.sql",
        "    SELECT value IS NFC NORMALIZED\n",
        "    SELECT true OR value IS NFC NORMALIZED\n",
        ("tests/db/test_text_identity.py::test_a_customer_name_is_held_to_the_same_rule",),
    ),
    Mutation(
        "default-ignorable code points are refused (UAX #44), not only format characters",
        "swagger_server/text.py",
        "    if why is None and ord(char) in DEFAULT_IGNORABLE:",
        "    if False:",
        (
            "tests/pipeline/test_edges.py::test_a_sku_that_looks_like_another_is_refused_naming_the_field",
            "tests/db/test_text_identity.py::test_the_database_and_the_api_agree_on_every_sample",
        ),
    ),
    Mutation(
        "code points not assigned in the rule's Unicode version are refused",
        "swagger_server/text.py",
        '    "Cn": "a code point not assigned in Unicode " + UNICODE_VERSION,\n',
        "",
        ("tests/db/test_text_identity.py::test_the_schemas_classes_are_the_apis_rule",),
    ),
    Mutation(
        "one Unicode version governs the rule, not the running Python's",
        "swagger_server/text.py",
        "import unicodedata2 as ucd\n",
        "import unicodedata as ucd\n",
        ("tests/db/test_unicode_version.py::test_the_rule_is_unicode_16_whatever_python_runs_it",),
    ),
    Mutation(
        "a SKU is printable ASCII: no look-alike from another script or a compatibility form",
        "swagger/swagger.yaml",
        "pattern: '^[!-~]([ -~]*[!-~])?$', description: 'Printable ASCII",
        "pattern: '^[^ ]+$', description: 'Printable ASCII",
        ("tests/pipeline/test_edges.py::test_a_sku_that_looks_like_another_is_refused_naming_the_field",),
    ),
    Mutation(
        "the database holds a SKU to printable ASCII too",
        "swagger_server/db/schema/021_text_identity_unicode_16.sql",
        "    ADD CONSTRAINT products_sku_ascii CHECK (sku ~ '^[!-~]([ -~]*[!-~])?$') NOT VALID,",
        "    ADD CONSTRAINT products_sku_ascii CHECK (true) NOT VALID,",
        ("tests/db/test_text_identity.py::test_psql_cannot_store_a_second_spelling",),
    ),
    Mutation(
        "the database's Unicode version is compared at start-up",
        "swagger_server/db/database.py",
        '            self.unicode = unicode.compare(conn) or "unknown"',
        '            self.unicode = "unknown"',
        ("tests/db/test_unicode_version.py::test_start_up_says_the_database_speaks_the_same_version",),
    ),
    Mutation(
        "a text an older database refuses is 400 naming the field",
        "swagger_server/errors.py",
        "    if isinstance(exc, psycopg2.errors.CheckViolation) and constraint in TEXT_RULES:",
        "    if False:",
        ("tests/db/test_unicode_version.py::test_text_a_database_with_older_unicode_refuses_is_400_naming_the_field",),
    ),
    Mutation(
        "/metrics is on its own port in compose",
        "docker-compose.yml",
        '      API_METRICS_PORT: "9100"\n',
        "",
        ("tests/deploy/test_deploy.py::test_metrics_are_served_only_on_their_own_port_in_every_shipped_deployment",),
    ),
    Mutation(
        "nginx does not serve /metrics",
        "deploy/nginx/store-api.conf",
        "    location = /metrics {",
        "    location = /metrics-nowhere {",
        ("tests/deploy/test_nginx.py::test_metrics_are_not_served_through_the_proxy",),
    ),
    Mutation(
        "nginx sends the address it saw, never appended to the client's X-Forwarded-For",
        "deploy/nginx/store-api.conf",
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        ("tests/deploy/test_nginx.py::test_a_clients_own_x_forwarded_for_is_not_its_address",),
    ),
    Mutation(
        "every log line is one printable, bounded line (library warnings too)",
        "swagger_server/observability/logs.py",
        "        safe = safe_text(message)\n",
        "        safe = message\n",
        ("tests/observability/test_tracing.py::test_hostile_tracestate_and_baggage_reach_the_log_escaped_and_bounded",),
    ),
    Mutation(
        "JSON log lines escape what str.splitlines() breaks on",
        "swagger_server/observability/logs.py",
        "        return line if line.isascii() else line.translate(_BREAKS)",
        "        return line",
        ("tests/pipeline/test_edges.py::test_a_json_log_line_is_one_line_whatever_its_fields_hold",),
    ),
    Mutation(
        "an untrusted caller's trace context is not continued (no forced sampling)",
        "swagger_server/observability/tracing.py",
        "    if trusted:\n        parent = propagate.extract(headers, getter=HEADERS)",
        "    if True:\n        parent = propagate.extract(headers, getter=HEADERS)",
        ("tests/observability/test_tracing.py::test_an_untrusted_caller_cannot_force_its_requests_traced",),
    ),
    Mutation(
        "trust is the TCP peer's, not the address a forwarding header names",
        "swagger_server/serving/protocol.py",
        '        self.scope["store_api_peer"] = self.client\n',
        "",
        ("tests/observability/test_tracing.py::test_an_untrusted_caller_cannot_force_its_requests_traced",),
    ),
    # -- issue 32: alerts, SLOs and the dashboard ---------------------------------------------------------
    Mutation(
        "the database alert reads the primary pool's label",
        "deploy/prometheus/store-api.rules.yml",
        'expr: min by (instance, pool) (store_api_database_up{pool="primary"}) == 0',
        'expr: min by (instance, pool) (store_api_database_up{pool="main"}) == 0',
        (
            "tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",
            "tests/observability/test_prometheus.py::test_the_database_stopped_fires_its_alert_and_it_resolves_when_it_returns",
        ),
    ),
    Mutation(
        "the pool-exhausted alert counts the pool's timeouts",
        "deploy/prometheus/store-api.rules.yml",
        'store_api_pool_events_total{event=~"timeouts|rejected"}',
        'store_api_pool_events_total{event=~"timeout|rejected"}',
        (
            "tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",
            "tests/observability/test_prometheus.py::test_an_exhausted_pool_fires_its_alerts_and_they_resolve",
        ),
    ),
    Mutation(
        "the fast availability burn pages at 14.4x",
        "deploy/prometheus/store-api.rules.yml",
        "(store_api:slo_errors:ratio_rate1h > (14.4 * 0.001) and store_api:slo_errors:ratio_rate5m > (14.4 * 0.001))",
        "(store_api:slo_errors:ratio_rate1h > (144 * 0.001) and store_api:slo_errors:ratio_rate5m > (144 * 0.001))",
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "the latency SLO counts requests within 0.5 s",
        "deploy/prometheus/store-api.rules.yml",
        'expr: 1 - sum(rate(store_api_request_duration_seconds_bucket{le="0.5"}[1h]))',
        'expr: 1 - sum(rate(store_api_request_duration_seconds_bucket{le="1"}[1h]))',
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "three worker restarts in 15 minutes are a ticket",
        "deploy/prometheus/store-api.rules.yml",
        "expr: sum by (instance) (increase(store_api_worker_starts_total[15m])) >= 3",
        "expr: sum by (instance) (increase(store_api_worker_starts_total[15m])) >= 30",
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "the replica alert's bound is [REPLICA] max_lag",
        "deploy/prometheus/store-api.rules.yml",
        "expr: max by (instance) (store_api_replica_lag_seconds) > 5",
        "expr: max by (instance) (store_api_replica_lag_seconds) > 50",
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "the database gauge says when the pool cannot reach it",
        "swagger_server/observability/sampling.py",
        '                m.database_up.labels(pool.name).set(1 if stats["database_up"] else 0)',
        "                m.database_up.labels(pool.name).set(1)",
        (
            "tests/observability/test_prometheus.py::test_the_database_stopped_fires_its_alert_and_it_resolves_when_it_returns",
        ),
    ),
    Mutation(
        "each worker counts its start",
        "swagger_server/observability/sampling.py",
        "                    self.metrics.worker_starts.inc()\n",
        "",
        ("tests/observability/test_prometheus.py::test_a_worker_restart_raises_no_false_alert",),
    ),
    Mutation(
        "every dashboard query names series that exist",
        "deploy/grafana/store-api.json",
        '"expr": "sum by (pool, state) (store_api_pool_connections{instance=~\\"$instance\\"})"',
        '"expr": "sum by (pool, state) (store_api_pool_connection{instance=~\\"$instance\\"})"',
        ("tests/observability/test_prometheus.py::test_every_dashboard_panel_returns_series",),
    ),
    Mutation(
        "the tests' store fixture and db seed --reset empty every table the catalogue has",
        "swagger_server/db/catalogue.py",
        "AND relkind IN ('r', 'p')",
        "AND relkind IN ('r', 'p') AND relname NOT LIKE 'sup%%'",
        (
            "tests/project/test_adding_a_resource.py::"
            "test_the_store_fixture_and_db_seed_reset_empty_every_table_of_the_catalogue",
        ),
    ),
    Mutation(
        "every GET handler may be served by the replica (marked read-only)",
        "swagger_server/request_scope.py",
        "    wrapper.read_only = True",
        "    wrapper.read_only = func.__name__ != 'get_order'",
        ("tests/project/test_adding_a_resource.py::test_every_get_handler_is_read_only_or_says_why_not",),
    ),
    Mutation(
        "the connector's failure is the pool's outage record (waiters fail at once, Retry-After)",
        "swagger_server/db/connector.py",
        "            before_sleep=lambda state: pool.connect_failed(",
        "            before_sleep=lambda state: None and pool.connect_failed(",
        ("tests/deploy/test_faults_gunicorn.py::test_an_unreachable_database_is_a_503_at_once_over_http",),
    ),
    Mutation(
        "make run's text log names the trace",
        "swagger_server/observability/logs.py",
        """trace = f" trace {f['trace_id']}" if f.get("trace_id") else """ "",
        """trace = """ "",
        ("tests/observability/test_observability.py::test_the_text_log_names_the_trace_when_tracing_is_on",),
    ),
    Mutation(
        "a worker over its share of connections leaves new ones to its peers",
        "swagger_server/serving/acceptor.py",
        "        return mine > low + max(SLACK, low >> 3)",
        "        return False",
        (
            "tests/deploy/test_spread.py::test_connections_opened_one_after_another_alternate",
            "tests/deploy/test_spread.py::test_a_burst_of_connections_spreads",
        ),
    ),
    Mutation(
        "a connection left to a peer is taken anyway after the deferral",
        "swagger_server/serving/acceptor.py",
        "                if waited < MAX_DEFER_NS and not self._share.fewer_have_looked_since(self._deferred_at):",
        "                if not self._share.fewer_have_looked_since(self._deferred_at):",
        ("tests/deploy/test_spread.py::test_a_stopped_worker_delays_no_connection_and_then_gets_the_new_ones",),
    ),
    Mutation(
        "a closed connection no longer counts toward its worker's share",
        "swagger_server/serving/protocol.py",
        "            self._share.closed()\n",
        "            pass\n",
        ("tests/deploy/test_spread.py::test_closed_connections_no_longer_count",),
    ),
    Mutation(
        "the liveness probe is answered on the event loop, without a thread",
        "swagger_server/app.py",
        'ON_LOOP = frozenset({"get_health"})',
        "ON_LOOP = frozenset()",
        ("tests/pipeline/test_handlers.py::test_liveness_is_answered_on_the_loop_without_a_thread",),
    ),
    Mutation(
        "a transaction's BEGIN is sent with its first statement, never left out",
        "swagger_server/db/connection.py",
        "        if conn.pending_begin is not None:\n            # The first statement",
        "        if False:\n            # The first statement",
        (
            "tests/db/test_transactions.py::test_a_raise_after_the_first_statement_rolls_it_back",
            "tests/db/test_transactions.py::test_the_first_statement_runs_inside_the_transaction_with_its_timeout",
        ),
    ),
    # -- issues 39 and 41: the search at size; operations that cannot hurt ------------------------------
    Mutation(
        "the search's probe reads up to and including its last id",
        "swagger_server/db/queries/customers.py",
        'f"    AND id > %(first_end)s AND id <= %(probe_end)s AND {probe}\\n"',
        'f"    AND id > %(first_end)s AND id < %(probe_end)s AND {probe}\\n"',
        ("tests/db/test_search.py::test_the_search_finds_what_a_plain_scan_finds",),
    ),
    Mutation(
        "an address term's local part is what comes before its first @",
        "swagger_server/db/queries/customers.py",
        'local, rest = term.split("@", 1)',
        'local, rest = term.rsplit("@", 1)',
        ("tests/db/test_search.py::test_the_search_finds_what_a_plain_scan_finds",),
    ),
    Mutation(
        "free text may hold line feeds between its lines, and nothing else the rule refuses",
        "swagger_server/text.py",
        '    if lines:\n        value = value.replace("\\n", " ")\n',
        "",
        (
            "tests/controllers/test_products.py::test_a_description_is_free_text_with_line_breaks_and_the_rest_of_the_rule",
        ),
    ),
    Mutation(
        "the settings' rules are applied",
        "swagger_server/config/checks.py",
        "            problem = rule_of(f).problem(getattr(values, f.name))\n",
        "            problem = None\n",
        ("tests/config/test_config.py::test_every_environment_variable_changes_its_setting_and_is_validated",),
    ),
    Mutation(
        "a scrape leaves out a worker's file not yet sized",
        "swagger_server/observability/metrics.py",
        "if os.stat(path).st_size >= self.HEADER:",
        "if os.stat(path).st_size >= 0:",
        (
            "tests/observability/test_worker_files.py::test_a_file_not_yet_sized_is_left_out_and_the_rest_is_read",
            "tests/observability/test_worker_files.py::test_a_scrape_beside_an_unsized_file_is_whole_over_http",
        ),
    ),
    Mutation(
        "a SIGTERM while a worker boots is not lost",
        "gunicorn.conf.py",
        "    worker.init_signals()\n    import wsgi",
        "    import wsgi",
        ("tests/deploy/test_gunicorn.py::test_a_sigterm_while_a_worker_boots_stops_it_at_once",),
    ),
    Mutation(
        "gunicorn listens on loopback unless told otherwise",
        "swagger_server/config/settings.py",
        'host: str = setting("127.0.0.1", env="HOST"',
        'host: str = setting("0.0.0.0", env="HOST"',
        ("tests/deploy/test_gunicorn.py::test_gunicorn_listens_on_loopback_unless_told_otherwise",),
    ),
    Mutation(
        "a degraded limiter asks Redis by itself, so an idle worker's gauge clears",
        "swagger_server/pipeline/fleet.py",
        "            except queue.Empty:  # down, and no request came: ask by itself\n                self._probe(",
        "            except queue.Empty:  # down, and no request came: ask by itself\n                continue\n                self._probe(",
        (
            "tests/pipeline/test_ratelimit_redis.py::"
            "test_the_degraded_gauge_clears_on_every_worker_of_every_host_when_redis_is_back",
        ),
    ),
    Mutation(
        "a problem answer is counted by its kind",
        "swagger_server/observability/middleware.py",
        "            kind = problem.decode() if problem else None",
        "            kind = None",
        ("tests/observability/test_problem_kinds.py::test_a_refusal_is_counted_by_its_kind_and_a_success_is_not",),
    ),
    Mutation(
        "sustained 429s over 5 % open a ticket",
        "deploy/prometheus/store-api.rules.yml",
        "/ on (instance) group_left sum by (instance) (rate(store_api_requests_total[5m])) > 0.05",
        "/ on (instance) group_left sum by (instance) (rate(store_api_requests_total[5m])) > 0.5",
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "statement timeouts that last open a ticket",
        "deploy/prometheus/store-api.rules.yml",
        '(rate(store_api_problems_total{kind="statement-timeout"}[5m])) > 0.01',
        '(rate(store_api_problems_total{kind="statement-timeout"}[5m])) > 1',
        ("tests/observability/test_prometheus.py::test_promtool_checks_the_rules_and_their_unit_tests_pass",),
    ),
    Mutation(
        "db upgrade refuses a rename before applying anything",
        "swagger_server/db/schema_rules.py",
        "        if stmt.renameType == ObjectType.OBJECT_COLUMN:",
        "        if False:",
        ("tests/db/test_schema_rules.py::test_db_upgrade_refuses_what_the_guide_forbids_before_applying_anything",),
    ),
    Mutation(
        "a waiver needs its reason",
        "swagger_server/db/schema_rules.py",
        "            if rule in waived and reason:",
        "            if rule in waived:",
        ("tests/db/test_schema_rules.py::test_a_waiver_without_its_reason_waives_nothing",),
    ),
    Mutation(
        "a reload of code that does not load keeps the last good code and the master",
        "gunicorn.conf.py",
        "    if not _reloading:\n",
        "    if True:\n",
        ("tests/deploy/test_reload.py::test_a_reload_of_broken_code_keeps_serving_the_last_good_code",),
    ),
    Mutation(
        "a worker whose master is gone stops",
        "swagger_server/serving/worker.py",
        "                server.should_exit = True\n                return",
        "                return",
        ("tests/deploy/test_reload.py::test_workers_whose_master_was_killed_stop_within_seconds",),
    ),
    Mutation(
        "a held upgrade lock is waited for under the deadline, not for ever",
        "swagger_server/db/migrate.py",
        "        if not cur.fetchone()[0]:  # another upgrade runs (or a session took the lock): yield, retry",
        "        if False:",
        (
            "tests/db/test_migrate.py::"
            "test_a_held_upgrade_lock_is_waited_for_under_the_deadline_naming_its_holder[pending no-transaction file]",
        ),
    ),
    Mutation(
        "a connection that sends nothing is closed at the head timeout",
        "swagger_server/serving/protocol.py",
        "        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._nothing_sent)",
        "        pass",
        ("tests/pipeline/test_http_layer.py::test_a_connection_that_sends_nothing_is_closed_at_the_head_timeout",),
    ),
    Mutation(
        "a body over its schema's sizes is refused before anything walks it",
        "swagger_server/validation.py",
        "        if (oversize := over_size(body, self._schema)) is not None:",
        "        if (oversize := None) is not None:",
        ("tests/pipeline/test_bounded_validation.py::test_a_string_over_its_max_length_is_refused_by_its_length",),
    ),
    Mutation(
        "a caller bound to one customer reaches that customer's rows only",
        "swagger_server/db/connection.py",
        '    if customer_id is None:\n        return ""',
        '    if True:\n        return ""',
        ("tests/identity/test_customer_scope.py::test_a_bound_key_reaches_its_own_rows_only",),
    ),
    Mutation(
        "a revoked API key is refused",
        "swagger_server/identity/keys.py",
        "        if key.revoked or (key.expires_at is not None and key.expires_at <= now):",
        "        if key.expires_at is not None and key.expires_at <= now:",
        (
            "tests/identity/test_keys.py::test_a_key_is_served_by_every_host_and_refused_by_each_within_the_bound_once_revoked",
        ),
    ),
    Mutation(
        "a provider's token for another audience is refused",
        "swagger_server/identity/oidc.py",
        '                options={"require": ["exp", "iss", "aud", "sub"]},',
        '                options={"require": ["exp", "iss", "sub"], "verify_aud": False},',
        ("tests/identity/test_oidc.py::test_forged_tokens_are_401",),
    ),
    Mutation(
        "a flood of unknown kids is one fetch of the provider's keys",
        "swagger_server/identity/oidc.py",
        "        if not force and self._clock() - self._fetched_at < MIN_REFETCH:",
        "        if False:",
        ("tests/identity/test_oidc.py::test_a_flood_of_made_up_kids_is_one_fetch",),
    ),
    Mutation(
        "a verified token kept in the cache still expires",
        "swagger_server/identity/oidc.py",
        '            if kid in self._keys and time.time() <= claims["exp"] + LEEWAY:',
        "            if kid in self._keys:",
        ("tests/identity/test_oidc.py::test_a_token_verified_before_still_expires",),
    ),
    Mutation(
        "the search asks the trigram index for a few substrings only when they narrow enough",
        "swagger_server/db/queries/trigrams.py",
        "    if estimate > ENOUGH:\n        return None",
        "    if False:\n        return None",
        ("tests/db/test_search.py::test_the_chosen_substrings_are_the_terms_rarest_apart",),
    ),
]


def run(mutation: Mutation, python: str) -> tuple[str, float, str]:
    """Apply `mutation` in a scratch copy and run its tests: "caught" (they failed), "SURVIVED" (they
    passed), "STALE" (its text is no longer in the file exactly once: the mutation needs updating, not
    the code) or "BROKEN" (the mutant did not even load: pytest could not collect, a mutation that
    proves nothing)."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        tree = Path(scratch) / "tree"
        shutil.copytree(
            ROOT,
            tree,
            ignore=shutil.ignore_patterns(".venv", ".venv-*", ".git", ".data", "build", "node_modules", ".*cache*"),
        )
        if (ROOT / "tools" / "node_modules").is_dir():  # the Node tools the tests run (Spectral, oidc-provider)
            (tree / "tools" / "node_modules").symlink_to(ROOT / "tools" / "node_modules")
        for change in ((mutation.old, mutation.new), *mutation.also):
            path, old, new = change if len(change) == 3 else (mutation.path, *change)
            target = tree / path
            text = target.read_text()
            if text.count(old) != 1:
                return "STALE", 0.0, f"the text to replace is not in {path} exactly once: {old[:60]!r}"
            target.write_text(text.replace(old, new))
        began = time.monotonic()
        result = subprocess.run(
            # Its own temporary directory: pytest prunes old numbered ones under the shared default,
            # which would delete the PostgreSQL data of a suite running at the same time.
            [
                python,
                "-m",
                "pytest",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--basetemp={tree}/.pytest-tmp",
                *mutation.tests,
            ],
            cwd=tree,
            capture_output=True,
            text=True,
            env={**os.environ, "MUTATION_SOURCE_TREE": str(ROOT)},  # its git history (the copy has none)
        )
        lines = (result.stdout + result.stderr).strip().splitlines()
        summary = [line for line in lines if " passed" in line or " failed" in line or " error" in line]
        verdict = {0: "SURVIVED", 1: "caught"}.get(result.returncode, "BROKEN")
        return verdict, time.monotonic() - began, (summary or lines or [""])[-1]


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or any(a in m.guarantee or a in " ".join(m.tests) for a in argv)]
    counts: dict[str, int] = {}
    for mutation in chosen:
        verdict, seconds, tail = run(mutation, sys.executable)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:8} {seconds:5.1f}s  {mutation.guarantee}\n          {tail}", flush=True)
    others = ", ".join(f"{n} {verdict.lower()}" for verdict, n in sorted(counts.items()) if verdict != "caught")
    print(f"{counts.get('caught', 0)}/{len(chosen)} mutations caught" + (f" ({others})" if others else ""))
    return 0 if counts.get("caught", 0) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
