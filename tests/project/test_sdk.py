"""Client SDKs generated from the spec, used the way a user would, against a live server.

Each SDK is generated into a temporary folder (scripts/sdk.py, as `make sdk` does) and runs a flow,
once with a configured token and once with an API key the service issued (both bearer tokens),
in its own process: create a customer, read it, create a product, place an order, read the dashboard,
then a 409 (duplicate email, short stock) and a 503 (a server whose database is down) as typed errors.
The spec itself must pass Spectral (every rule of its OpenAPI ruleset) and openapi-spec-validator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from swagger_server.identity.keys import new_key
from tests.support.auth import TOKEN
from tests.support.database import TEST_DB, admin_connect, query
from tests.support.servers import Gunicorn

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parents[1] / "sdk_flows"
NODE_BIN = ROOT / "tools" / "node_modules" / ".bin"
sys.path.insert(0, str(ROOT / "scripts"))

from sdk import generate  # noqa: E402


def node_tool(name: str) -> str:
    path = NODE_BIN / name
    assert path.exists(), f"{path} missing: `make test` installs tools/ with npm ci"
    return str(path)


@pytest.fixture(scope="module")
def servers(database_url):
    """A healthy server, and one whose database is unreachable (every database operation: 503)."""
    live = Gunicorn(database_url, WEB_CONCURRENCY=1)
    down = Gunicorn(
        f"postgresql://postgres@127.0.0.1:{free_port()}/{TEST_DB}", WEB_CONCURRENCY=1, DB_POOL_MIN_CONNECTIONS=0
    )
    yield {"BASE_URL": live.base, "DOWN_URL": down.base, "TOKEN": TOKEN}
    live.stop()
    down.stop()


@pytest.fixture
def flow_env(servers, database_url):
    """The servers, the configured token, and an API key the service issued (made after any fixture
    that empties the store: `store` empties api_keys too), once the live server serves it."""
    key_id, key, digest = new_key()
    conn = admin_connect(database_url)
    query(conn, "INSERT INTO api_keys (id, secret_sha256, scopes) VALUES (%s, %s, '{write}')", (key_id, digest))
    conn.close()
    wait_until(
        lambda: (
            httpx.get(f"{servers['BASE_URL']}/api/customers", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        ),
        timeout=10,
        message="the key to be served",
    )
    return {**servers, "KEY": key}


def run_flow(args: list[str], env: dict, cwd: Path) -> None:
    """The flow with the configured token, then with the API key, each sent as the SDK's bearer token."""
    for credential in (env["TOKEN"], env["KEY"]):
        flow_env = {**os.environ, **env, "TOKEN": credential}
        done = subprocess.run(args, env=flow_env, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


def spectral(spec: Path, report: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Spectral with our ruleset (every rule of spectral:oas); its findings, from a JSON report."""
    done = subprocess.run(
        [
            node_tool("spectral"),
            "lint",
            "--ruleset",
            str(ROOT / ".spectral.yaml"),
            "--fail-severity",
            "hint",
            "--format",
            "json",
            "--output",
            str(report),
            str(spec),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return done, json.loads(report.read_text())


def test_spec_passes_spectral_with_every_oas_rule(tmp_path):
    done, findings = spectral(ROOT / "swagger" / "swagger.yaml", tmp_path / "report.json")
    assert findings == [] and done.returncode == 0, json.dumps(findings, indent=1)[:3000] + done.stderr


def test_spectral_does_find_problems_in_a_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "openapi: 3.0.3\ninfo: {title: x, version: '1'}\npaths:\n  /a:\n    get:\n"
        "      responses: {'200': {description: ok}}\n"
    )
    done, findings = spectral(bad, tmp_path / "report.json")
    assert done.returncode != 0
    codes = {finding["code"] for finding in findings}
    assert {"operation-operationId", "operation-description", "info-contact"} <= codes


def test_spec_passes_openapi_spec_validator():
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    spec, _ = read_from_filename(str(ROOT / "swagger" / "swagger.yaml"))
    validate(spec)  # raises on any violation


def test_openapi_generator_python_sdk(servers, store, flow_env, tmp_path):
    made = generate(tmp_path, ("python",))
    run_flow(
        [sys.executable, str(FLOWS / "flow_openapi_generator.py")],
        {**flow_env, "PYTHONPATH": str(made["python"])},
        tmp_path,
    )
    # docs/API.md's usage example, as typed but for this server's address and token (it reads
    # product 3: the store fixture's rows, so the test passes alone too).
    readme = (ROOT / "docs" / "API.md").read_text()
    start = readme.index("```python\nimport store_api_client")
    example = readme[start + len("```python\n") : readme.index("```", start + 3)]
    assert example.count("http://localhost:8080") == 1 and example.count('"demo-…"') == 1
    example = example.replace("http://localhost:8080", servers["BASE_URL"]).replace('"demo-…"', repr(servers["TOKEN"]))
    done = subprocess.run(
        [sys.executable, "-c", example],
        env={**os.environ, "PYTHONPATH": str(made["python"])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    name, price = done.stdout.rsplit(maxsplit=1)
    assert name and int(price) > 0, done.stdout


def test_openapi_python_client_sdk(flow_env, tmp_path):
    made = generate(tmp_path, ("pyclient",))
    run_flow(
        [sys.executable, str(FLOWS / "flow_openapi_python_client.py")],
        {**flow_env, "PYTHONPATH": str(made["pyclient"].parent)},
        tmp_path,
    )


def test_typescript_fetch_sdk(flow_env, tmp_path):
    made = generate(tmp_path, ("typescript",))
    project = tmp_path / "ts-flow"
    shutil.copytree(made["typescript"] / "src", project / "src" / "sdk")
    shutil.copy(FLOWS / "flow.ts", project / "src" / "flow.ts")
    (project / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "es2020",
                    "module": "commonjs",
                    "lib": ["es2020", "dom"],
                    "strict": True,
                    "outDir": "dist",
                    "rootDir": "src",
                    "skipLibCheck": True,
                    "types": ["node"],
                    "typeRoots": [str(ROOT / "tools" / "node_modules" / "@types")],
                },
                "include": ["src"],
            }
        )
    )
    compiled = subprocess.run([node_tool("tsc"), "-p", str(project)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    run_flow(["node", str(project / "dist" / "flow.js")], flow_env, project)
