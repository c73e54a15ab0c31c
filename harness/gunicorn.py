"""Starting and stopping a real gunicorn, for the tests (tests/support/servers.py) and the benchmark
(bench/servers.py): one launcher, so both run the server the same way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(args: list[str], env: dict, *, cwd: Path = ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """`python -m gunicorn *args` in `cwd` with exactly `env`; text pipes unless told otherwise."""
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *args],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def healthy(base: str) -> bool:
    """GET /api/health answers 200 within a second."""
    try:
        with urllib.request.urlopen(f"{base}/api/health", timeout=1) as response:
            return response.status == 200
    except OSError:  # refused, or too busy starting (8 workers) to answer in 1 s
        return False


def wait_serving(base: str, process, timeout: float = 30.0) -> bool:
    """Wait until it serves (True) or exits (False); TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if healthy(base):
            return True
        time.sleep(0.05)
    raise TimeoutError(f"gunicorn did not serve {base} within {timeout:g} s")


def stop(process, timeout: float = 30.0) -> int:
    """SIGTERM (graceful), wait up to `timeout`, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
