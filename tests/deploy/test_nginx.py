"""nginx in front of real gunicorn, serving the shipped deploy/nginx/store-api.conf.

The test changes only what it must: the listen address, the upstream address, the log path, and the
client timeouts (10 s shipped, 2 s here, so the slow-client test is short). Skipped with a reason
where Debian's nginx is not installed (fails under CI=true; .ci/run installs it).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from harness.waiting import wait_listening, wait_until
from swagger_server.db.embedded import free_port
from tests.support.auth import AUTH
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "store-api.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
HEADER_TIMEOUT = 2


class Nginx:
    def __init__(self, workdir: Path, *upstream_ports: int, shipped_limits: bool = False):
        self.dir = workdir
        self.shipped_limits = shipped_limits
        self.port = free_port()
        self.access_log = workdir / "access.log"
        self.write_config(upstream_ports)
        temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (workdir / "nginx.conf").write_text(
            f"""{user}daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {workdir / "store-api.conf"};
}}
"""
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        wait_listening(self.process, self.port, "nginx")
        self.base = f"http://127.0.0.1:{self.port}"

    def write_config(self, upstream_ports, down=()) -> None:
        """The shipped server block, with this test's addresses; `down` ports marked `down`. Every
        client here is 127.0.0.1: the per-address limits are raised, except where a test checks them
        (`shipped_limits`)."""
        conf = SHIPPED.read_text()
        if not self.shipped_limits:
            for old, new in (("rate=50r/s", "rate=100000r/s"), ("limit_conn store_api_conn 40;", "")):
                assert conf.count(old) == 1, f"{old!r} is not in {SHIPPED} exactly once"
                conf = conf.replace(old, new)
        servers = "\n    ".join(f"server 127.0.0.1:{port}{' down' if port in down else ''};" for port in upstream_ports)
        for old, new in (
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("server api:8080;", servers),
            ("/var/log/nginx/access.log", str(self.access_log)),
            ("client_header_timeout 10s;", f"client_header_timeout {HEADER_TIMEOUT}s;"),
            ("client_body_timeout 10s;", f"client_body_timeout {HEADER_TIMEOUT}s;"),
        ):
            assert conf.count(old) == 1, f"{old!r} is not in {SHIPPED} exactly once"
            conf = conf.replace(old, new)
        (self.dir / "store-api.conf").write_text(conf)

    def reload(self, upstream_ports, down=()) -> None:
        """New config, `nginx -s reload`; returns once every worker of the old config has exited
        (they finish their requests first; their idle upstream connections close with them)."""
        master = psutil.Process(self.process.pid)
        old = {p.pid for p in master.children()}
        self.write_config(upstream_ports, down)
        subprocess.run([NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-s", "reload"], check=True)
        wait_until(
            lambda: (children := {p.pid for p in master.children()}) and not children & old,
            timeout=20,
            message="nginx's old workers to exit",
        )

    def log(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    # Tracing on (console): the API's spans show the trace context nginx passed on. The API trusts
    # forwarding headers as docker-compose.yml ships it (FORWARDED_ALLOW_IPS "*"), so what nginx sends
    # is all that stands between a client and the address the API logs and limits by.
    api = Gunicorn(
        database_url,
        WEB_CONCURRENCY=2,
        OTEL_TRACES_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="50",
        FORWARDED_ALLOW_IPS=_compose_api_env()["FORWARDED_ALLOW_IPS"],
    )
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), api.port)
    yield proxy, api
    proxy.stop()
    api.stop()


def _compose_api_env() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"]


def api_lines(api) -> list[dict]:
    return [
        entry
        for entry in (json.loads(line) for line in api.stdout().splitlines() if line.startswith('{"ts"'))
        if entry.get("logger") == "store_api.access"
    ]


def test_traffic_passes_with_the_clients_request_id_and_address(stack, store):
    proxy, api = stack
    # From 127.0.0.2: nginx sees that address and forwards it; gunicorn trusts nginx (127.0.0.1).
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/api/customers/1", headers={**AUTH, "X-Request-ID": "via-nginx-1"})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200 and body["email"] == "ada@example.com"
    assert response.getheader("X-Request-ID") == "via-nginx-1"
    (line,) = wait_until(
        lambda: [e for e in api_lines(api) if e["request_id"] == "via-nginx-1"], message="the API's access line"
    )
    assert line["client"] == "127.0.0.2" and line["status"] == 200  # the client, not the proxy
    assert any(e["request_id"] == "via-nginx-1" and e["client"] == "127.0.0.2" for e in proxy.log())
    # Without an X-Request-ID, nginx's own id is the one both logs and the answer carry.
    generated = requests.get(f"{proxy.base}/api/health", timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32
    wait_until(lambda: [e for e in api_lines(api) if e["request_id"] == generated], message="the generated id")


def test_a_clients_own_x_forwarded_for_is_not_its_address(stack, store):
    """With the compose file's FORWARDED_ALLOW_IPS, a client's own X-Forwarded-For would be taken as its
    address if nginx appended to it; nginx sends the address it saw, alone."""
    proxy, api = stack
    for spoof in ("6.6.6.6", "6.6.6.6, 7.7.7.7", "unknown"):
        request_id = f"spoof-{abs(hash(spoof))}"
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10, source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/api/health", headers={"X-Forwarded-For": spoof, "X-Request-ID": request_id})
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        (line,) = wait_until(lambda r=request_id: [e for e in api_lines(api) if e["request_id"] == r], message="line")
        assert line["client"] == "127.0.0.2", (spoof, line["client"])


def test_metrics_are_not_served_through_the_proxy(stack):
    """The API here still serves /metrics on its main port (the observer); through nginx it is a 404."""
    proxy, api = stack
    assert requests.get(f"{api.base}/metrics", timeout=10).status_code == 200
    for path in ("/metrics", "/metrics?x=1"):
        response = requests.get(f"{proxy.base}{path}", timeout=10)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
        assert "store_api_requests_total" not in response.text


def test_the_trace_context_passes_through_and_nginx_logs_it(stack, store):
    """A traceparent and tracestate sent to nginx reach the API, which does not trust nginx's peer
    address for traces (API_TRACE_TRUSTED_PEERS unset, as shipped): its server span starts a new trace
    linked to the caller's span; nginx logs the caller's traceparent."""
    proxy, api = stack
    trace, parent = "6bf92f3577b34da6a3ce929d0e0e4738", "00f067aa0ba902b8"
    traceparent = f"00-{trace}-{parent}-01"
    response = requests.get(
        f"{proxy.base}/api/customers/1",
        headers={**AUTH, "traceparent": traceparent, "tracestate": "congo=t61rcWkgMzE"},
        timeout=10,
    )
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    (line,) = wait_until(lambda: [e for e in api_lines(api) if e["request_id"] == request_id], message="the line")
    assert line["trace_id"] != trace
    spans = wait_until(
        lambda: [
            span
            for span in (json.loads(x) for x in api.stdout().splitlines() if x.startswith('{"name"'))
            if span["kind"] == "SpanKind.SERVER"
            and any(link["context"]["trace_id"] == f"0x{trace}" for link in span.get("links", []))
        ],
        timeout=10,
        message="the API's server span, linked to the caller's",
    )
    assert spans[0]["context"]["trace_id"] == f"0x{line['trace_id']}" and spans[0]["parent_id"] is None
    assert spans[0]["links"][0]["context"]["span_id"] == f"0x{parent}"
    assert "congo" not in json.dumps(spans[0])  # the caller's tracestate is not read
    assert any(e["request_id"] == request_id and e["traceparent"] == traceparent for e in proxy.log())


def test_a_body_over_the_limit_is_refused_by_the_proxy(stack):
    proxy, api = stack
    response = requests.post(
        f"{proxy.base}/api/customers",
        data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={**AUTH, "Content-Type": "application/json", "X-Request-ID": "too-big-1"},
        timeout=10,
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "/api/problems/payload-too-large"
    assert response.headers["X-Request-ID"] == "too-big-1"
    # The observer first: a request sent after it, through the same proxy, is in gunicorn's log. Each
    # worker's log writer flushes every 20 ms, so 0.2 s after the marker appears, a line for the large
    # body (answered before the marker was sent) would be there too, whichever worker had it.
    requests.get(f"{proxy.base}/api/health", headers={"X-Request-ID": "after-too-big-1"}, timeout=10)
    wait_until(lambda: [e for e in api_lines(api) if e["request_id"] == "after-too-big-1"], message="the marker")
    time.sleep(0.2)  # settle: the other worker's log writer flushes within 20 ms (see above)
    assert not [e for e in api_lines(api) if e["request_id"] == "too-big-1"]  # gunicorn never saw it


def test_a_client_trickling_its_headers_is_cut_while_others_are_served(stack):
    proxy, _ = stack
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=HEADER_TIMEOUT * 3)
    cut = {}

    def trickle():
        began = time.monotonic()
        try:
            for byte in b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(0.25)  # pacing: one byte every 0.25 s, the slow client under test
        except OSError:
            pass
        cut["after"] = time.monotonic() - began

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        served = [requests.get(f"{proxy.base}/api/health", timeout=5).status_code for _ in range(5)]
        assert served == [200] * 5
        sock.settimeout(HEADER_TIMEOUT * 3)
        started = time.monotonic()
        try:
            answer = sock.recv(4096)  # nginx closes it (or answers 408) at the header timeout
        except ConnectionResetError:
            answer = b""
        waited = time.monotonic() - started
    finally:
        sock.close()
        trickler.join(40)
    assert answer == b"" or b" 408 " in answer.split(b"\r\n", 1)[0], answer[:100]
    assert waited <= HEADER_TIMEOUT * 1.5, waited
    assert "after" in cut


def test_api_errors_reach_the_client_unchanged(stack, store):
    proxy, api = stack
    for path, headers in (("/api/customers/999", AUTH), ("/api/customers/1", {}), ("/api/customers?limit=0", AUTH)):
        direct = requests.get(f"{api.base}{path}", headers=headers, timeout=10)
        proxied = requests.get(f"{proxy.base}{path}", headers=headers, timeout=10)
        assert proxied.status_code == direct.status_code and proxied.json() == direct.json(), path
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        assert proxied.headers.get("www-authenticate") == direct.headers.get("www-authenticate")


def test_restarting_one_of_two_masters_under_load_loses_no_request(database_url, store, tmp_path):
    """Two gunicorn masters behind one nginx, 8 clients reading and writing. One master is drained
    (marked down, nginx reloaded), stopped (SIGTERM: graceful), replaced by a new one on its port and
    put back, as a rolling update does to a host: every request is answered 2xx, reads and writes.
    docs/DEPLOY.md records the figures, and what happens without the drain."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    first, second = Gunicorn(database_url), Gunicorn(database_url)
    proxy = Nginx(tmp_path, first.port, second.port)
    replacement = None
    outcomes: list[tuple[str, int]] = []
    stop = threading.Event()

    def client(n):
        session = requests.Session()
        # A connection per request: with keep-alive to nginx, nginx's own reload can close an idle
        # client connection just as a request is sent on it (seen once in a dozen runs). That is
        # HTTP/1.1's keep-alive race, which clients retry around; this test is about the API side.
        session.headers.update({**AUTH, "Connection": "close"})
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 5 == 0:
                    response = session.post(
                        f"{proxy.base}/api/customers",
                        json={"name": "Rolling", "email": f"roll-{n}-{i}@example.com"},
                        timeout=30,
                    )
                    outcomes.append(("POST", response.status_code))
                else:
                    outcomes.append(("GET", session.get(f"{proxy.base}/api/customers/1", timeout=30).status_code))
            except requests.RequestException as exc:  # a failure is an outcome too, not a crash
                outcomes.append(("error", repr(exc)))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: len(outcomes) >= 200, timeout=30, message="load before the restart")
        before = len(outcomes)
        ports = (first.port, second.port)
        # Drain: the host leaves the upstream first (on Kubernetes, the endpoints and the preStop
        # pause do this), so no request meets a keep-alive connection that its master is closing.
        proxy.reload(ports, down={first.port})
        code, _ = first.stop()  # graceful: in-flight requests finish, the port closes
        assert code == 0
        during = len(outcomes)
        # A new master on the old one's port, as the restarted host comes back, then back in.
        replacement = Gunicorn(database_url, port=first.port)
        proxy.reload(ports)
        wait_until(lambda: len(outcomes) >= during + 300, timeout=60, message="load after the restart")
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
        proxy.stop()
        second.stop()
        if replacement is not None:
            replacement.stop()
    failed = [o for o in outcomes if o[0] == "error" or not 200 <= o[1] < 300]
    assert failed == [], failed[:10]
    writes = [o for o in outcomes if o[0] == "POST"]
    assert writes and len(outcomes) > before
    print(f"rolling restart behind nginx: {len(outcomes)} requests ({len(writes)} writes), 0 failed")


def test_an_api_that_does_not_answer_is_a_503_problem_with_retry_after(tmp_path):
    """nginx's own 502/504 (nothing listens upstream) reach the client as a 503 problem, its status
    and its body agreeing, with Retry-After."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    proxy = Nginx(tmp_path, free_port())
    try:
        response = requests.get(f"{proxy.base}/api/customers/1", headers={"X-Request-ID": "nobody-home"}, timeout=10)
    finally:
        proxy.stop()
    assert response.status_code == 503 and response.json()["status"] == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "1" and response.headers["x-request-id"] == "nobody-home"


# The upper bound grows with the time the loop took (the rate refills 50 a second), so it holds however
# slow the machine; 10 requests of slack for nginx's millisecond accounting.
@pytest.mark.timing
def test_one_address_past_its_rate_gets_429_problems_from_nginx(database_url, store, tmp_path):
    """The shipped limit_req (50/s, bursts of 100) as shipped: 300 requests from one address at once
    pass about the burst, and the rest are 429 problem+json with Retry-After, never reaching gunicorn."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    api = Gunicorn(database_url, WEB_CONCURRENCY=1)
    (tmp_path / "nginx").mkdir()
    proxy = Nginx(tmp_path / "nginx", api.port, shipped_limits=True)
    try:
        session = requests.Session()
        statuses = []
        start = time.monotonic()
        refused = None
        for _ in range(300):
            response = session.get(f"{proxy.base}/api/health", timeout=5)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused = response
        seconds = time.monotonic() - start
        passed = statuses.count(200)
        print(f"nginx limit_req: {passed} of 300 passed in {seconds:.2f} s")
        # The burst, plus what the rate refilled meanwhile (50 a second).
        assert 100 <= passed <= 101 + 50 * seconds + 10, (passed, seconds)
        assert set(statuses) == {200, 429}, set(statuses)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "/api/problems/rate-limited"
    finally:
        proxy.stop()
        api.stop()
