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
from tests.support.servers import Gunicorn, gunicorn_env

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


def break_controller_syntax(tree: Path) -> str:
    with open(tree / "swagger_server" / "controllers" / "health.py", "a") as f:
        f.write("\n\ndef broken(:\n    pass\n")
    return "SyntaxError in"


def break_spec(tree: Path) -> str:
    spec = tree / "swagger" / "swagger.yaml"
    spec.write_text(spec.read_text().replace("operationId: get_health\n", "operationId: get_health_renamed\n", 1))
    return "spec error: "


def break_import(tree: Path) -> str:
    with open(tree / "swagger_server" / "controllers" / "health.py", "a") as f:
        f.write("\nimport a_module_that_is_not_there  # noqa: E402\n")
    return "ModuleNotFoundError: No module named 'a_module_that_is_not_there'"


def break_setting(tree: Path) -> str:
    (tree / "config.ini").write_text("[POOL]\nmax_connections = lots\n")
    return "configuration error: "


def break_wsgi(tree: Path) -> str:
    with open(tree / "wsgi.py", "a") as f:
        f.write("\ndef (:\n")
    return "SyntaxError in wsgi.py"


def break_app_build(tree: Path) -> str:
    """Valid Python that fails only when it runs: caught by building the app once, not by compiling."""
    with open(tree / "wsgi.py", "a") as f:
        f.write("\nthis is not python\n")
    return "the app does not build: NameError: name 'this' is not defined"


BREAKAGES = [break_controller_syntax, break_spec, break_import, break_setting, break_wsgi, break_app_build]


@pytest.mark.slow
@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__ for b in BREAKAGES])
def test_a_reload_of_broken_code_keeps_serving_the_last_good_code(database_url, tmp_path, breakage):
    """SIGHUP with code that does not load: one error naming the cause, the master stays, every request
    of a trickle through it is answered 200 by the last good code (the workers gunicorn starts for the
    reload are forked with it); a later SIGHUP with the code fixed serves the new code."""
    tree = copy_tree(tmp_path / "tree")
    (tree / "config.ini").write_text("")
    server = Gunicorn(database_url, cwd=tree, APP_CONFIG=str(tree / "config.ini"))
    try:
        master = psutil.Process(server.process.pid)
        trickle = Trickle(server.base)
        trickle.start()
        wait_until(lambda: len(trickle.results) >= 10, timeout=10, message="the trickle to run")
        pristine = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        cause = breakage(tree)
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused: " in server.output(), timeout=30, message="the reload to be refused")
        refused = [line for line in server.output().splitlines() if "reload refused: " in line]
        assert len(refused) == 1 and cause in refused[0], refused
        # The workers gunicorn started for the reload serve, with the old code; the master is the same.
        time.sleep(3)  # time passing: the trickle goes on through the workers' replacement
        assert server.process.poll() is None and master.is_running()
        assert get(server.base, "/api/health/reloaded")[0] == 404  # the old code, not the broken one
        # Fixed (the tree as it was, plus a new operation), then SIGHUP: the new code serves.
        for path, content in pristine.items():
            path.write_bytes(content)
        (tree / "wsgi.py").write_bytes(pristine[tree / "wsgi.py"])
        deploy_new_code(tree)
        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: get(server.base, "/api/health/reloaded")[0] == 200,
            timeout=30,
            interval=0.1,
            message="the fixed code",
        )
        time.sleep(0.5)  # time passing: the trickle runs on after the good reload
        trickle.running = False
        trickle.join(10)
        failed = [r for r in trickle.results if r != 200]
        assert len(trickle.results) >= 100 and not failed, (len(trickle.results), failed[:5])
        assert server.output().count("reload refused: ") == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_workers_whose_master_was_killed_stop_within_seconds(database_url, tmp_path):
    """SIGKILL to the master (no hook runs, nothing is cleaned up): its workers notice within the
    orphan check (1 s) and stop, rather than serve on with no one to replace or stop them; the run
    directory with the metrics they write is still there while they do."""
    server = Gunicorn(database_url)
    workers = [psutil.Process(pid) for pid in server.workers]
    assert get(server.base, "/api/health")[0] == 200  # the observer: they serve
    # The metrics directory the master made, from the files a worker keeps open in it.
    metrics_dir = Path(next(f.path for w in workers for f in w.open_files() if f.path.endswith(".db"))).parent
    killed = time.monotonic()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    assert metrics_dir.is_dir()  # nothing removed under the workers

    def stopped():
        return not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    wait_until(stopped, timeout=10, interval=0.1, message="the orphaned workers to stop")
    took = time.monotonic() - killed
    print(f"orphaned workers stopped {took:.1f} s after their master was killed")
    assert took < 5, took
    with pytest.raises(OSError):
        get(server.base, "/api/health")
    shutil.rmtree(metrics_dir.parent, ignore_errors=True)  # the run directory the killed master left
