"""Real gunicorn for tests: start it through gunicorn.conf.py with a given environment, wait until it serves."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from harness import gunicorn
from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from tests.support.auth import TOKEN

ROOT = Path(__file__).resolve().parents[2]
EMPTY = str(ROOT / "tests" / "empty.ini")


def gunicorn_env(database_url: str, port: int, **extra) -> dict:
    # Not PYTHONPATH either: each server imports the code of the tree it runs in (its cwd).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "API_", "WEB_", "CORS_")) and k not in ("PYTHONPATH", "HOST")
    }
    env.update(
        {
            "APP_CONFIG": EMPTY,
            "DATABASE_URL": database_url,
            "PORT": str(port),
            "API_TOKENS": TOKEN,
            "WEB_CONCURRENCY": "2",
            "DB_POOL_MIN_CONNECTIONS": "2",
            "DB_POOL_MAX_CONNECTIONS": "4",
            # As make_settings: a report per request, no roller (an older release ignores both).
            "API_DASHBOARD_MAX_AGE": "0",
            "API_DASHBOARD_ROLLUP_INTERVAL": "0",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_gunicorn(env, cwd: Path = ROOT) -> subprocess.Popen:
    return gunicorn.start(["-c", "gunicorn.conf.py", "wsgi:app"], env, cwd=cwd)


def refused_start(env, timeout: float = 60) -> tuple[int, str, str]:
    """Start gunicorn expecting it to refuse (exit by itself): (exit code, stdout, stderr). If it
    starts and serves instead, it is stopped here, not left running behind the failed test."""
    process = start_gunicorn(env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        raise AssertionError(f"gunicorn did not refuse to start: {err[-2000:]}") from None
    return process.returncode, out, err


class _PortTaken(Exception):
    """gunicorn could not bind its port: someone took it between free_port() and the bind."""


class Gunicorn:
    """A running gunicorn: `base` URL, `workers` pids, `stop()` (SIGTERM, returns exit code and stderr).

    Its output is drained continuously: a full pipe would block the workers' log writes, and with
    them every request (a harness fault that once looked like a server hang).
    """

    def __init__(self, database_url: str, port: int | None = None, cwd: Path = ROOT, **env):
        self.cwd = cwd  # the tree whose code it serves (another release's, in the upgrade tests)
        # free_port() picks a port that another process may take before gunicorn binds it: a start
        # that fails with EADDRINUSE is retried on a new port (gunicorn cannot report a port 0 bind).
        # A port the caller chose is not changed.
        for attempt in range(1 if port else 3):
            try:
                self._start(database_url, port or free_port(), env)
                return
            except _PortTaken:
                if port or attempt == 2:
                    raise

    def _start(self, database_url: str, port: int, env: dict) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = start_gunicorn(gunicorn_env(database_url, self.port, **env), self.cwd)
        self._output: list[str] = []  # both streams, in the order lines arrived
        self._stdout: list[str] = []
        self._drains = [
            threading.Thread(target=self._drain, args=(stream, mine), daemon=True)
            for stream, mine in ((self.process.stdout, self._stdout), (self.process.stderr, None))
        ]
        for drain in self._drains:
            drain.start()
        try:
            wait_until(
                lambda: gunicorn.healthy(self.base) or self.process.poll() is not None,
                timeout=20,
                message="gunicorn to serve",
            )
            if self.process.poll() is not None:
                for drain in self._drains:
                    drain.join(5)
                if "Connection in use" in self.output() or "Address already in use" in self.output():
                    raise _PortTaken(self.port)
                raise RuntimeError(f"gunicorn exited: {self.output()}")
            expected = int(env.get("WEB_CONCURRENCY", 2))
            self.workers = wait_until(
                lambda: (
                    len(psutil.Process(self.process.pid).children()) == expected
                    and [p.pid for p in psutil.Process(self.process.pid).children()]
                ),
                timeout=10,
            )
        except BaseException:
            # A server that did not come up is not left running behind the failed test.
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            raise

    def _drain(self, stream, mine: list[str] | None) -> None:
        for line in stream:
            self._output.append(line)
            if mine is not None:
                mine.append(line)

    def output(self) -> str:
        return "".join(self._output)

    def stdout(self) -> str:
        """What gunicorn wrote on stdout alone (the access log's stream)."""
        return "".join(self._stdout)

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        """SIGTERM (graceful), wait; return the exit code and everything gunicorn printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        for drain in self._drains:
            drain.join(5)
        return self.process.returncode, self.output()


def live_server(name: str, *, tally=None, **env):
    """A module-scoped fixture called `name`: one gunicorn on the tests' database, given `env`, started
    for the module's first test that asks and stopped after its last; `tally` (rawhttp.Tally) starts
    counting once it serves. At module level: `server = live_server("server", WEB_THREADS=4)`."""

    @pytest.fixture(scope="module", name=name)
    def fixture(database_url):
        live = Gunicorn(database_url, **env)
        try:
            if tally is not None:
                tally.begin(live)
            yield live
        finally:
            live.stop()

    return fixture
