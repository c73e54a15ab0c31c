"""deploy/k8s: valid against the pinned Kubernetes version, checkov-clean, and inside the budget.

The validators run from .venv-deploy (`make test` makes it from requirements-deploy.txt).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from swagger_server.config import load_settings
from swagger_server.db.budget import behind_pgbouncer, effective_pool_size

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TOOLS = ROOT / ".venv-deploy" / "bin"
KUBERNETES = "1.33.0"  # the version the manifests are validated against
# What the manifests assume of the PostgreSQL behind PgBouncer (configmap.yaml says so too).
POSTGRES_MAX_CONNECTIONS, POSTGRES_RESERVED = 100, 3


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.skip(f"{path} is missing: `make test` installs requirements-deploy.txt into .venv-deploy")
    return path


def manifests() -> dict[str, list[dict]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {name: [d for d in yaml.safe_load_all((K8S / name).read_text()) if d] for name in kustomization["resources"]}


def find(kind: str, name: str) -> dict:
    for documents in manifests().values():
        for document in documents:
            if document["kind"] == kind and document["metadata"]["name"] == name:
                return document
    raise AssertionError(f"no {kind} {name}")


def test_every_file_is_in_the_kustomization():
    listed = set(manifests())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_manifests_are_valid_kubernetes_objects():
    files = [str(K8S / name) for name in manifests()]
    result = subprocess.run(
        [str(tool("kubernetes-validate")), "--strict", "-k", KUBERNETES, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == sum(len(d) for d in manifests().values())


def test_checkov_finds_nothing_and_every_skip_says_why():
    result = subprocess.run(
        [str(tool("checkov")), "-d", str(K8S), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and failed == [], failed
    assert summary["passed"] > 200
    skipped = report["results"]["skipped_checks"]
    assert len(skipped) == summary["skipped"]
    for check in skipped:  # each skip names its reason next to the resource
        assert len(check["check_result"].get("suppress_comment") or "") > 20, check["check_id"]


def api_settings():
    env = dict(find("ConfigMap", "store-api")["data"])
    env.update({"APP_CONFIG": str(ROOT / "tests" / "empty.ini"), "DATABASE_URL": "postgresql://u@pgbouncer/store"})
    return load_settings(env)


def fleet_fits(max_pods: int) -> bool:
    """The fleet at its largest (HPA max + the rolling update's surge) against PgBouncer's client limit."""
    settings = api_settings()
    settings = settings.with_overrides(server={"workers": max_pods * settings.server.workers})
    return behind_pgbouncer(settings).fits


def test_the_fleet_fits_pgbouncer_and_pgbouncer_fits_postgresql():
    deployment, hpa = find("Deployment", "store-api"), find("HorizontalPodAutoscaler", "store-api")
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    largest = hpa["spec"]["maxReplicas"] + surge
    assert fleet_fits(largest)
    assert not fleet_fits(largest * 10)  # the same check refuses a fleet ten times larger
    bouncer = find("Deployment", "pgbouncer")
    env = {e["name"]: e.get("value") for e in bouncer["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = api_settings()
    assert settings.pool.pgbouncer_max_client_conn == int(env["MAX_CLIENT_CONN"])  # per PgBouncer
    server_side = bouncer["spec"]["replicas"] * int(env["DEFAULT_POOL_SIZE"])
    assert server_side <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED - settings.pool.budget_headroom
    assert env["POOL_MODE"] == "transaction"


def test_the_api_pod_drains_before_it_stops_and_is_sized_for_its_workers():
    settings = api_settings()
    pod = find("Deployment", "store-api")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + settings.server.graceful_timeout
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    workers = settings.server.workers
    assert int(container["resources"]["limits"]["cpu"]) == workers  # a core per worker at saturation
    assert int(container["resources"]["requests"]["memory"].removesuffix("Mi")) >= 100 * workers
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert effective_pool_size(settings) == settings.pool.max_connections  # no connection beyond a thread


def test_metrics_are_served_only_on_their_own_port_in_every_shipped_deployment():
    """/metrics is not public (issue 30): compose and the manifests set API_METRICS_PORT, which nothing
    public reaches; the nginx file answers /metrics itself (tests/deploy/test_nginx.py proves the 404)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    api = compose["api"]
    port = api["environment"]["API_METRICS_PORT"]
    assert port and port in api["expose"] and "ports" not in api
    assert all(port not in str(p) for service in compose.values() for p in service.get("ports", []))
    nginx = (ROOT / "deploy" / "nginx" / "store-api.conf").read_text()
    assert f"api:{port}" not in nginx and "location = /metrics" in nginx
    config = find("ConfigMap", "store-api")["data"]
    k8s_port = int(config["API_METRICS_PORT"])
    deployment = find("Deployment", "store-api")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "metrics", "containerPort": k8s_port} in container["ports"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(k8s_port)
    service = find("Service", "store-api")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    policy = find("NetworkPolicy", "store-api")
    rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == k8s_port for p in r["ports"])]
    assert rules and all(r.get("from") for r in rules), "the metrics port is open to the monitoring namespace alone"
