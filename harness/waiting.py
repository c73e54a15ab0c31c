"""Small test helpers: polling for a condition that another thread makes true."""

from __future__ import annotations

import socket
import time


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01, message: str = "condition"):
    """Poll `predicate` until it returns truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def wait_listening(process, port: int, name: str, timeout: float = 10.0) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:`port`; fail at once if it exits."""

    def listening():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {process.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout=timeout, interval=0.05, message=f"{name} to listen")
