"""A real Redis on loopback for the rate-limit tests (Debian's `redis-server`): no persistence, its own
port, stopped (or killed, for the fault tests) by its pid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.processes import OwnProcess
from harness.waiting import wait_listening
from swagger_server.db.embedded import free_port

BINARY = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class Redis(OwnProcess):
    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            [
                BINARY,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_listening(self.process, self.port, "redis-server")
        return self
