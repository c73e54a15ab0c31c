"""The servers `make bench` measures: ours under gunicorn.conf.py, and the peers with their usual worker
classes (FastAPI + asyncpg; the tutorial design on Connexion). Each is a Server: started, waited for, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.config import PEER_THREADS, RESULTS, TOKEN, WORKERS  # noqa: E402
from harness import gunicorn  # noqa: E402
from swagger_server.db.embedded import free_port  # noqa: E402


class Server:
    """One gunicorn with its own environment; output drained to a log file."""

    def __init__(self, name: str, args: list[str], env: dict, port: int, cwd: Path = ROOT):
        self.name, self.port = name, port
        self.base = f"http://127.0.0.1:{port}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log = open(RESULTS / f"{name}.log", "w")
        self.process = gunicorn.start(args, env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            if not gunicorn.wait_serving(self.base, self.process, timeout=30):
                raise RuntimeError(f"{name} exited; see {self.log.name}")
        except TimeoutError:
            gunicorn.stop(self.process)
            raise RuntimeError(f"{name} did not start; see {self.log.name}") from None
        time.sleep(0.5)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.workers())

    def stop(self) -> None:
        gunicorn.stop(self.process)
        self.log.close()


def base_env(database_url: str, port: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "API_", "WEB_", "CORS_", "APP_"))}
    env.update(
        {
            "APP_CONFIG": str(ROOT / "tests" / "empty.ini"),
            "DATABASE_URL": database_url,
            "PORT": str(port),
            "WEB_CONCURRENCY": str(WORKERS),
            "DB_POOL_MIN_CONNECTIONS": "4",
            "PEER_POOL_MAX": str(PEER_THREADS),
            "API_TOKENS": TOKEN,
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ours(name: str, database_url: str, **extra) -> Server:
    port = free_port()
    return Server(
        name,
        ["-c", "gunicorn.conf.py", "--log-level", "warning", "wsgi:app"],
        base_env(database_url, port, **extra),
        port,
    )


def peer(name: str, module: str, worker_args: list[str], database_url: str) -> Server:
    port = free_port()
    return Server(
        name,
        [
            "-w",
            str(WORKERS),
            *worker_args,
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            f"bench.peers.{module}:app",
        ],
        base_env(database_url, port),
        port,
    )


FASTEST = "fastest common Python stack: FastAPI + asyncpg, uvicorn, token checked"
TUTORIAL = "peer: the tutorial design on Connexion 3 (default middleware, ThreadedConnectionPool on g)"


def fastest(database_url: str) -> Server:
    return peer("peer-asyncpg", "fastapi_asyncpg", ["-k", "uvicorn_worker.UvicornWorker"], database_url)


def tutorial(database_url: str) -> Server:
    return peer("peer-tutorial", "tutorial.app", ["-k", "uvicorn_worker.UvicornWorker"], database_url)
