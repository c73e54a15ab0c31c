"""The shipped alert and recording rules (deploy/prometheus/) and the Grafana dashboard (deploy/grafana/),
tested like code (issue 32): promtool's checks and unit tests, then a real Prometheus scraping real
gunicorn in front of a PostgreSQL of this test's own, which the test stops and starts.

The live rules are the shipped file with only its `for:` durations and its one-minute rate window
shortened (a minute becomes seconds), as tests/deploy/test_nginx.py shortens nginx's timeouts; every
expression, label and threshold is the shipped one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import requests

from harness.prometheus import BINARY, PROMTOOL, Prometheus
from harness.waiting import wait_until
from swagger_server.db.migrate import upgrade
from tests.support.auth import AUTH
from tests.support.database import seed_demo
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "store-api.rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "store-api.json"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def _need(tool):
    if tool is None:
        pytest.skip("Debian's prometheus package is not installed (apt-get install prometheus; .ci/run installs it)")


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    _need(PROMTOOL)
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    assert len(RULE_TESTS) == 2
    tested = subprocess.run([PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(COMPOSE_CONFIG)], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_severity_a_summary_a_runbook_and_a_unit_test():
    import yaml

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    tested = {name for path in RULE_TESTS for name in re.findall(r"alertname: (\w+)", path.read_text())}
    runbook = (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"], name
        entry = name.removesuffix("Slow")  # a slow burn shares its fast burn's entry
        base = "{{ if $externalLabels.runbook_url }}{{ $externalLabels.runbook_url }}{{ else }}docs/OBSERVABILITY.md{{ end }}"
        assert rule["annotations"]["runbook_url"] == f"{base}#{entry.lower()}", name
        assert f"### {entry}" in runbook, f"docs/OBSERVABILITY.md has no runbook entry for {name}"
        assert name in tested, f"no promtool unit test for {name}"


def test_compose_monitoring_profile_loads_the_shipped_rules_and_scrapes_the_metrics_port():
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in prometheus["volumes"]}
    assert mounts["./deploy/prometheus/store-api.rules.yml"] == "/etc/prometheus/rules/store-api.rules.yml"
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/store-api.rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "store-api"  # the rules' StoreApiDown reads up{job="store-api"}
    assert job["static_configs"][0]["targets"] == [f"api:{services['api']['environment']['API_METRICS_PORT']}"]


RUNBOOK = "https://runbooks.example/store-api/OBSERVABILITY.md"


def _live_rules(path: Path) -> Path:
    text = RULES.read_text()
    for old, new in (("for: 1m", "for: 3s"), ("for: 30s", "for: 2s"), ("for: 2m", "for: 3s"), ("[1m]", "[5s]")):
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    _need(BINARY)
    from swagger_server.db.embedded import EmbeddedPostgres

    work = tmp_path_factory.mktemp("prometheus")
    pg = EmbeddedPostgres(work / "pg", settings={"max_connections": "40"})
    pg.start()
    conn = psycopg2.connect(pg.url("postgres"))
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE store")
    conn.close()
    url = pg.url("store")
    upgrade(url)
    seed_demo(url, 200)
    api = Gunicorn(
        url,
        WEB_CONCURRENCY=2,
        WEB_THREADS=4,
        DB_POOL_MIN_CONNECTIONS=1,
        DB_POOL_MAX_CONNECTIONS=1,
        DB_POOL_TIMEOUT=1,
        API_CALLER_SHARE=1,
    )
    # The runbook's base, as a deployment sets it (prometheus.yml): every alert's runbook_url is under it.
    prometheus = Prometheus(
        work, [f"127.0.0.1:{api.port}"], [_live_rules(work / "rules.yml")], external_labels={"runbook_url": RUNBOOK}
    )
    stop = threading.Event()

    def trickle():  # a little traffic all along, as production has
        session = requests.Session()
        while not stop.is_set():
            try:
                session.get(f"{api.base}/api/customers/1", headers=AUTH, timeout=5)
            except requests.RequestException:
                pass
            stop.wait(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    yield pg, api, prometheus, url
    stop.set()
    thread.join(10)
    prometheus.stop()
    api.stop()
    pg.destroy()


def _scraped(prometheus) -> bool:
    return bool(prometheus.query('up{job="store-api"} == 1')) and bool(
        prometheus.query("sum(rate(store_api_requests_total[5s])) > 0")
    )


def test_a_healthy_service_fires_no_alert(live):
    _, _, prometheus, _ = live
    wait_until(lambda: _scraped(prometheus), timeout=30, message="prometheus scraping the API")
    time.sleep(5)  # every `for:` here is at most 3 s
    assert prometheus.firing() == {}


def test_a_worker_restart_raises_no_false_alert(live):
    """A worker killed (its counters' files stay, prometheus_client's multiprocess mode) is replaced:
    the request counters never go backwards, and no alert fires for one restart."""
    _, api, prometheus, _ = live
    before = float(prometheus.query("sum(store_api_worker_starts_total)")[0]["value"][1])
    os.kill(api.workers[0], signal.SIGKILL)
    wait_until(
        lambda: float(prometheus.query("sum(store_api_worker_starts_total)")[0]["value"][1]) > before,
        timeout=30,
        message="the replacement worker's start in /metrics",
    )
    time.sleep(6)  # time passing: two scrapes and a rule evaluation after the restart
    assert prometheus.query("sum(resets(store_api_requests_total[30s])) > 0") == []
    assert prometheus.firing() == {}


def test_an_exhausted_pool_fires_its_alerts_and_they_resolve(live):
    pg, api, prometheus, url = live
    # A row lock held here: each PATCH of that product holds its worker's one connection while it waits,
    # and the requests behind it wait DB_POOL_TIMEOUT (1 s) for a connection, then 503 pool-exhausted.
    holder = psycopg2.connect(url)
    cur = holder.cursor()
    cur.execute("SELECT id FROM products WHERE id = 1 FOR UPDATE")
    stop = threading.Event()
    statuses: list[int] = []

    def writer():
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.patch(f"{api.base}/api/products/1", json={"stock": 5}, headers=AUTH, timeout=10)
                statuses.append(response.status_code)
            except requests.RequestException:
                pass

    writers = [threading.Thread(target=writer, daemon=True) for _ in range(6)]
    for thread in writers:
        thread.start()
    try:
        fired = wait_until(
            lambda: (
                {"StoreApiPoolExhausted", "StoreApiPoolSaturated"} <= set(prometheus.firing()) and prometheus.firing()
            ),
            timeout=40,
            message="the pool alerts to fire",
        )
        assert fired["StoreApiPoolExhausted"][0]["labels"]["pool"] == "primary"
        assert fired["StoreApiPoolExhausted"][0]["annotations"]["runbook_url"] == f"{RUNBOOK}#storeapipoolexhausted"
        assert 503 in statuses  # what the alert says the clients see
    finally:
        stop.set()
        holder.rollback()
        holder.close()
        for thread in writers:
            thread.join(15)
    wait_until(
        lambda: not {"StoreApiPoolExhausted", "StoreApiPoolSaturated"} & set(prometheus.firing()),
        timeout=40,
        message="the pool alerts to resolve",
    )


def test_the_database_stopped_fires_its_alert_and_it_resolves_when_it_returns(live):
    pg, api, prometheus, _ = live
    assert "StoreApiDatabaseUnreachable" not in prometheus.firing()
    pg.stop()
    try:
        fired = wait_until(
            lambda: prometheus.firing().get("StoreApiDatabaseUnreachable"), timeout=40, message="the alert to fire"
        )
        assert fired[0]["labels"]["severity"] == "page" and fired[0]["labels"]["pool"] == "primary"
        assert "StoreApiDown" not in prometheus.firing()  # /metrics is served with the database down
    finally:
        pg.start()
    wait_until(
        lambda: "StoreApiDatabaseUnreachable" not in prometheus.firing(), timeout=60, message="the alert to resolve"
    )


def test_every_dashboard_panel_returns_series(live):
    """Run last: the faults above made the series of the 503 causes."""
    _, _, prometheus, _ = live
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    queries = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            queries += 1
            if not prometheus.query(expr):
                empty.append(f"{panel['title']}: {expr}")
    assert queries >= 14
    assert not empty, empty
