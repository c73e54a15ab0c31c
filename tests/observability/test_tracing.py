"""OpenTelemetry: spans received by a real OTLP/HTTP receiver (the protocol decoded here with the
official protobuf definitions, not a mock of the SDK), over real gunicorn; the console exporter; the
trace id in the access log; the pool under db.client.connection.* names in /metrics; nginx passing
the trace context on (tests/deploy/test_nginx.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from tests.support.auth import AUTH, TOKEN
from tests.support.database import query
from tests.support.servers import Gunicorn, gunicorn_env, refused_start

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it is sent, decoded."""

    def __init__(self):
        self.spans: list[dict] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [event.name for event in span.events],
                            "links": [link.trace_id.hex() for link in span.links],
                        }
                    )

    def trace(self, trace_id: str) -> list[dict]:
        return [span for span in self.spans if span["trace_id"] == trace_id]

    def stop(self) -> None:
        self.server.shutdown()


def _value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers


def _traced_server(database_url, **env):
    """Real gunicorn exporting to a Receiver of its own; (server, receiver), stopped by the caller.
    The tests' clients are on 127.0.0.1: trusted, their trace context continued. Untrusted callers
    connect from 127.0.0.2 (test_an_untrusted_caller_cannot_force_its_requests_traced)."""
    receiver = Receiver()
    server = Gunicorn(
        database_url,
        WEB_CONCURRENCY=1,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        API_TRACE_TRUSTED_PEERS="127.0.0.1/32",
        **env,
    )
    return server, receiver


@pytest.fixture(scope="module")
def traced(database_url):
    server, receiver = _traced_server(database_url, OTEL_SERVICE_NAME="store-api-test")
    yield server, receiver
    server.stop()
    receiver.stop()


def test_a_request_with_a_traceparent_continues_the_callers_trace(traced, store):
    server, receiver = traced
    response = requests.get(
        f"{server.base}/api/customers/1", headers={**AUTH, "traceparent": TRACEPARENT, "tracestate": "vendor=x"}
    )
    assert response.status_code == 200
    spans = wait_until(
        lambda: (s := receiver.trace(CALLER_TRACE)) and len(s) >= 3 and s, timeout=10, message="the request's spans"
    )
    (root,) = [s for s in spans if s["kind"] == SERVER]
    assert root["service"] == "store-api-test"
    assert root["parent"] == CALLER_SPAN  # the caller's span is its parent
    assert root["name"] == "GET /api/customers/{customer_id}"  # the route template, not /api/customers/1
    attributes = root["attributes"]
    assert attributes["http.route"] == "/api/customers/{customer_id}" and attributes["http.response.status_code"] == 200
    assert attributes["store_api.request_id"] == response.headers["X-Request-ID"]
    # Who asked: the caller security.py names (a configured token's digest), never the token itself.
    assert attributes["enduser.id"] == hashlib.sha256(TOKEN.encode()).hexdigest()[:16]
    assert TOKEN not in json.dumps(spans)
    children = [s for s in spans if s["parent"] == root["span_id"]]
    wait_span = next(s for s in children if s["name"] == "db.client.connection.wait")
    assert wait_span["attributes"]["db.client.connection.pool.name"] == "primary"
    select = next(s for s in children if s["kind"] == CLIENT)
    assert select["name"].startswith("SELECT ") and select["attributes"]["db.system.name"] == "postgresql"
    text = select["attributes"]["db.query.text"]
    assert "FROM customers WHERE id = %s" in text and "= 1" not in text  # the placeholder, never the value
    # The access log line carries the trace id: logs and traces join.
    line = wait_until(
        lambda: [json.loads(x) for x in server.stdout().splitlines() if response.headers["X-Request-ID"] in x],
        message="the access line",
    )[0]
    assert line["trace_id"] == CALLER_TRACE
    assert line["caller"] == attributes["enduser.id"]


def test_a_request_without_a_traceparent_starts_a_trace(traced, store):
    server, receiver = traced
    response = requests.get(f"{server.base}/api/products/2")
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    root = wait_until(
        lambda: [s for s in receiver.spans if s["attributes"].get("store_api.request_id") == request_id],
        timeout=10,
        message="the server span",
    )[0]
    assert root["parent"] == "" and root["trace_id"] != CALLER_TRACE and len(root["trace_id"]) == 32
    assert wait_until(lambda: [s for s in receiver.trace(root["trace_id"]) if s["kind"] == CLIENT])


def test_a_failing_statement_is_an_error_on_its_span(traced, store):
    """A duplicate email: the INSERT's span records the SQLSTATE (23505) and ERROR; the request is
    a 409 (not an error of the server span)."""
    server, receiver = traced
    trace = "5bf92f3577b34da6a3ce929d0e0e4737"
    response = requests.post(
        f"{server.base}/api/customers",
        json={"name": "Ada again", "email": "ada@example.com"},
        headers={**AUTH, "traceparent": f"00-{trace}-{CALLER_SPAN}-01"},
    )
    assert response.status_code == 409
    spans = wait_until(lambda: (s := receiver.trace(trace)) and any(x["kind"] == SERVER for x in s) and s, timeout=10)
    failed = [s for s in spans if s["attributes"].get("db.response.status_code") == "23505"]
    assert failed and failed[0]["status"] == 2 and "exception" in failed[0]["events"]  # STATUS_CODE_ERROR
    (root,) = [s for s in spans if s["kind"] == SERVER]
    assert root["status"] != 2 and root["attributes"]["http.response.status_code"] == 409


def test_the_pool_is_under_opentelemetrys_names_in_metrics(traced, store):
    server, _ = traced
    requests.get(f"{server.base}/api/customers/1", headers=AUTH)
    time.sleep(1.2)  # the pool gauges are copied once a second
    text = requests.get(f"{server.base}/metrics").text
    for state in ("idle", "used"):
        assert (
            f'db_client_connection_count{{db_client_connection_pool_name="primary",db_client_connection_state="{state}"}}'
            in text
        )
    for name in ("idle_max", "idle_min", "max", "pending_requests"):
        assert f'db_client_connection_{name}{{db_client_connection_pool_name="primary"}}' in text, name
    assert 'db_client_connection_timeouts_total{db_client_connection_pool_name="primary"}' in text
    for name in ("create", "wait", "use"):
        line = next(
            x
            for x in text.splitlines()
            if x.startswith(
                f'db_client_connection_{name}_time_seconds_count{{db_client_connection_pool_name="primary"}}'
            )
        )
        assert float(line.rsplit(" ", 1)[1]) >= 1, line  # observed: connections opened, waited for, held


def test_the_console_exporter_and_tracing_off(database_url, store):
    """With OTEL_TRACES_EXPORTER=console the spans are JSON lines on stdout with the caller's trace id;
    with tracing off (the default) there are none and the access line has no trace id. Both runs make
    the same request, so the observer that finds the spans in the first would find them in the second."""
    outputs = {}
    for exporter in ("console", "none"):
        server = Gunicorn(
            database_url,
            WEB_CONCURRENCY=1,
            OTEL_TRACES_EXPORTER=exporter,
            OTEL_BSP_SCHEDULE_DELAY="50",
            API_TRACE_TRUSTED_PEERS="127.0.0.1/32",
        )
        try:
            response = requests.get(f"{server.base}/api/customers/1", headers={**AUTH, "traceparent": TRACEPARENT})
            assert response.status_code == 200
            request_id = response.headers["X-Request-ID"]
            wait_until(lambda s=server, r=request_id: r in s.stdout(), message="the access line")
            if exporter == "console":
                wait_until(lambda s=server: s.stdout().count(CALLER_TRACE) >= 4, timeout=10, message="the spans")
        finally:
            server.stop()  # flushes the exporter
        outputs[exporter] = server.stdout()
    spans = [json.loads(x) for x in outputs["console"].splitlines() if x.startswith('{"name"')]
    mine = [s for s in spans if s["context"]["trace_id"] == f"0x{CALLER_TRACE}"]
    (root,) = [s for s in mine if s["kind"] == "SpanKind.SERVER"]
    assert root["parent_id"] == f"0x{CALLER_SPAN}" and root["name"] == "GET /api/customers/{customer_id}"
    assert any(s["kind"] == "SpanKind.CLIENT" and s["parent_id"] == root["context"]["span_id"] for s in mine)
    access = [json.loads(x) for x in outputs["console"].splitlines() if '"store_api.access"' in x]
    assert any(line.get("trace_id") == CALLER_TRACE for line in access)
    # Off: the same request, no span, no trace id.
    assert '{"name"' not in outputs["none"] and CALLER_TRACE not in outputs["none"]
    assert any('"store_api.access"' in x for x in outputs["none"].splitlines())


def test_an_unknown_exporter_stops_start_up_with_one_line(database_url):
    code, _, err = refused_start(gunicorn_env(database_url, free_port(), OTEL_TRACES_EXPORTER="zipkin"))
    assert code != 0
    assert "configuration error: OTEL_TRACES_EXPORTER (environment): expected one of otlp, console, none" in err


def test_statements_outside_a_request_are_not_traced(traced, store):
    """The connection forgets the tracer when the request gives it back: the pool's own statements
    (a ping, a reset) and anything run on it later outside a request make no root spans."""
    server, receiver = traced
    requests.get(f"{server.base}/api/customers/1", headers=AUTH)
    time.sleep(0.5)  # settle: spans are exported in batches; a stray root would arrive within it
    roots = [s for s in receiver.spans if s["parent"] == "" and s["kind"] != SERVER]
    assert roots == [], roots[:3]
    assert query(store, "SELECT 1") == [(1,)]


def test_a_caller_that_does_not_sample_gets_no_spans_but_keeps_its_trace_id(traced, store):
    """The default sampler follows the caller: `traceparent` flags 00 means no spans (and no child
    work: the pool wait and statements are not traced); the access line still names the trace. A
    sampled request right after it proves the receiver would have seen them."""
    server, receiver = traced
    unsampled, sampled = "7bf92f3577b34da6a3ce929d0e0e4739", "8bf92f3577b34da6a3ce929d0e0e473a"
    first = requests.get(
        f"{server.base}/api/customers/1", headers={**AUTH, "traceparent": f"00-{unsampled}-{CALLER_SPAN}-00"}
    )
    requests.get(f"{server.base}/api/customers/1", headers={**AUTH, "traceparent": f"00-{sampled}-{CALLER_SPAN}-01"})
    wait_until(lambda: len(receiver.trace(sampled)) >= 3, timeout=10, message="the sampled request's spans")
    assert receiver.trace(unsampled) == []
    line = wait_until(
        lambda: [json.loads(x) for x in server.stdout().splitlines() if first.headers["X-Request-ID"] in x],
        message="the access line",
    )[0]
    assert line["trace_id"] == unsampled


def _from(address: str, port: int, headers: dict) -> int:
    """GET /api/customers/1 from a source address of our choosing (a loopback alias)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        conn.request("GET", "/api/customers/1", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ratio_zero(database_url):
    """A sampler that samples nothing of its own (ratio 0) and follows trusted parents. Every peer may
    name the client (FORWARDED_ALLOW_IPS "*", as compose ships it): trust must still be the TCP peer's."""
    server, receiver = _traced_server(
        database_url,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
        FORWARDED_ALLOW_IPS="*",
    )
    yield server, receiver
    server.stop()
    receiver.stop()


def test_an_untrusted_caller_cannot_force_its_requests_traced(ratio_zero, store):
    """From 127.0.0.2 (not a trusted peer) the sampled flag, and trace ids chosen to pass any ratio
    sampler, are not followed: no span. The same request from the trusted 127.0.0.1 is traced in the
    caller's trace (the observer)."""
    server, receiver = ratio_zero
    forced = ["9bf92f3577b34da6a3ce929d0e0e4731", "00000000000000000000000000000001", "0" * 31 + "2"]
    for trace in forced:
        assert _from("127.0.0.2", server.port, {**AUTH, "traceparent": f"00-{trace}-{CALLER_SPAN}-01"}) == 200
    # Naming a trusted address in X-Forwarded-For changes the logged client, not whose trace is followed.
    spoofed = "dbf92f3577b34da6a3ce929d0e0e4734"
    forced.append(spoofed)
    headers = {**AUTH, "traceparent": f"00-{spoofed}-{CALLER_SPAN}-01", "X-Forwarded-For": "127.0.0.1"}
    assert _from("127.0.0.2", server.port, headers) == 200
    trusted = "abf92f3577b34da6a3ce929d0e0e4732"
    assert _from("127.0.0.1", server.port, {**AUTH, "traceparent": f"00-{trusted}-{CALLER_SPAN}-01"}) == 200
    wait_until(lambda: len(receiver.trace(trusted)) >= 3, timeout=10, message="the trusted caller's spans")
    time.sleep(0.3)  # the batch processor exports every 50 ms: anything of the forced requests is out
    assert all(receiver.trace(trace) == [] for trace in forced)
    assert all(trace not in span["links"] for span in receiver.spans for trace in forced)
    assert {span["trace_id"] for span in receiver.spans} == {trusted}


def test_an_untrusted_callers_trace_is_a_link_from_a_new_trace(traced, store):
    server, receiver = traced
    caller = "cbf92f3577b34da6a3ce929d0e0e4733"
    status = _from(
        "127.0.0.2", server.port, {**AUTH, "traceparent": f"00-{caller}-{CALLER_SPAN}-01", "tracestate": "v=1"}
    )
    assert status == 200
    (root,) = wait_until(
        lambda: [s for s in receiver.spans if caller in s["links"]], timeout=10, message="the linked server span"
    )
    assert root["kind"] == SERVER and root["trace_id"] != caller and root["parent"] == ""
    assert receiver.trace(caller) == []


HOSTILE_STATE = "k\u0085forged=" + "x" * 12000


def test_hostile_tracestate_and_baggage_reach_the_log_escaped_and_bounded(traced, store):
    """OpenTelemetry's propagators log a warning that quotes an invalid tracestate or baggage; a
    trusted peer's headers reach them. Every line of the server's output stays one printable line of
    at most 2000 characters (str.splitlines, which also breaks on U+0085, U+2028 and U+2029)."""
    server, _ = traced
    nel = "k\x85v=" + "x" * 12000
    raw = (
        (
            f"GET /api/customers/1 HTTP/1.1\r\nHost: t\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n"
        ).encode()
        + b"tracestate: "
        + nel.encode("latin-1")
        + b"\r\nbaggage: "
        + nel.encode("latin-1")
        + b"\r\n\r\n"
    )
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw)
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
    # The observer: OpenTelemetry did warn, and the warning reached the log, escaped.
    wait_until(lambda: "\\x85" in server.output(), timeout=10, message="the escaped warning in the log")
    output = server.output()
    assert "\x85" not in output and "\u2028" not in output
    assert max(len(line) for line in output.splitlines()) <= 2000
