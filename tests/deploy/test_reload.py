"""`kill -HUP` on gunicorn's master (its documented reload) serves the code and spec on disk, and no
request of a trickle fails during the swap. Run from a copy of the tree, so the test can change the
code under a running server as a deploy would."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from harness import gunicorn
from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from tests.servers import gunicorn_env

ROOT = Path(__file__).resolve().parents[2]
NEW_PATH = """
  /health/reloaded:
    get:
      tags: [health]
      operationId: get_reloaded
      x-openapi-router-controller: swagger_server.controllers.health
      summary: Added by the reload test
      responses:
        '200':
          description: The new code serves.
          content:
            application/json:
              schema: {type: object}
"""


def copy_tree(dest: Path) -> Path:
    for name in ("swagger_server", "swagger"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("wsgi.py", "gunicorn.conf.py", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def deploy_new_code(tree: Path) -> None:
    """What a deploy changes: the version, a new operation in the spec, its controller."""
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(re.sub(r'^version = ".*"$', 'version = "9.9.9"', pyproject.read_text(), count=1, flags=re.M))
    spec = tree / "swagger" / "swagger.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("\n  /health/ready:\n", NEW_PATH + "\n  /health/ready:\n", 1))
    with open(tree / "swagger_server" / "controllers" / "health.py", "a") as f:
        f.write('\n\ndef get_reloaded():\n    return reply({"reloaded": True}, 200)\n')


def get(base: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Trickle(threading.Thread):
    """GET /api/health on a new connection every 20 ms; every outcome recorded."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.results, self.running = base, [], True

    def run(self):
        while self.running:
            try:
                self.results.append(get(self.base, "/api/health")[0])
            except OSError as exc:
                self.results.append(repr(exc))
            time.sleep(0.02)  # pacing: 50 requests a second through the reload


@pytest.mark.slow
def test_sighup_serves_the_new_code_and_spec_and_no_request_fails(database_url, tmp_path):
    tree = copy_tree(tmp_path / "tree")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = gunicorn_env(database_url, port)
    env.pop("PYTHONPATH", None)  # the copy's code, from its own folder
    process = gunicorn.start(["-c", "gunicorn.conf.py", "wsgi:app"], env, cwd=tree, stdout=None, stderr=None)
    try:
        assert gunicorn.wait_serving(base, process, timeout=30)
        old_version = json.loads(get(base, "/api/health")[1])["version"]
        assert get(base, "/api/health/reloaded")[0] == 404  # the observer sees the old code
        old_workers = {p.pid for p in psutil.Process(process.pid).children()}
        trickle = Trickle(base)
        trickle.start()
        wait_until(lambda: len(trickle.results) >= 10, timeout=10, message="the trickle to run")
        deploy_new_code(tree)
        process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: get(base, "/api/health/reloaded")[0] == 200, timeout=30, interval=0.1, message="the new code"
        )
        version = json.loads(get(base, "/api/health")[1])["version"]
        assert version == "9.9.9" != old_version, version
        wait_until(
            lambda: not old_workers & {p.pid for p in psutil.Process(process.pid).children()},
            timeout=30,
            message="the old workers to leave",
        )
        time.sleep(0.5)  # time passing: the trickle runs on after the old workers left
        trickle.running = False
        trickle.join(10)
        failed = [r for r in trickle.results if r != 200]
        assert len(trickle.results) >= 30 and not failed, (len(trickle.results), failed[:5])
    finally:
        gunicorn.stop(process)
