"""The load drivers: k6 (checks on status and body, for throughput and latency) and wrk (the open-loop
tail at many connections)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.config import CUSTOMERS, DURATION, TOKEN, VUS  # noqa: E402

if TYPE_CHECKING:
    from bench.servers import Server

K6 = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")


def k6(
    server: Server, target: str = "customer", vus: int = VUS, duration: str = DURATION, warmup: str = "3s", **env
) -> dict:
    """Run k6 against `server`; return throughput, latency percentiles, answers and worker CPU per request."""
    script = str(ROOT / "bench" / "k6" / "get.js")
    common = {
        **os.environ,
        "BASE_URL": server.base,
        "TARGET": target,
        "MAX_ID": str(CUSTOMERS),
        "TOKEN": TOKEN,
        "VUS": str(vus),
        **{k: str(v) for k, v in env.items()},
    }
    if warmup:
        subprocess.run(
            [K6, "run", "--quiet", "--no-summary", script],
            env={**common, "DURATION": warmup},
            check=True,
            capture_output=True,
        )
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    cpu_before = server.cpu_seconds()
    subprocess.run(
        [K6, "run", "--quiet", f"--summary-export={summary}", script],
        env={**common, "DURATION": duration},
        check=True,
        capture_output=True,
    )
    cpu = server.cpu_seconds() - cpu_before
    metrics = json.loads(summary.read_text())["metrics"]
    summary.unlink()
    duration_ms = metrics["http_req_duration"]
    requests = metrics["http_reqs"]["count"]

    def count(name):
        return metrics.get(name, {}).get("count", 0)

    return {
        "rps": metrics["http_reqs"]["rate"],
        "requests": requests,
        "p50": duration_ms["med"],
        "p90": duration_ms["p(90)"],
        "p99": duration_ms["p(99)"],
        "max": duration_ms["max"],
        "good": count("good_answers"),
        "bad": count("bad_answers"),
        "unavailable": count("unavailable_503"),
        "cpu_ms_per_request": 1000 * cpu / max(1, requests),
    }


def _wrk_duration_ms(text: str) -> float:
    """A wrk duration ("812.00us", "17.3ms", "1.02s", "2.00m") in milliseconds."""
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    server: Server, path: str, connections: int = VUS, seconds: int = 10, script: str | None = None, headers=()
) -> dict | None:
    """Peak throughput with wrk (lighter than k6, no body checks): req/s, p50, p99, non-2xx, worker CPU per
    request; None if wrk is absent. `script` is a Lua file in bench/wrk/ (random ids) instead of `path`."""
    binary = shutil.which("wrk")
    if not binary:
        return None
    url = f"{server.base}{path}"
    args = ["-H", f"Authorization: Bearer {TOKEN}", *(arg for header in headers for arg in ("-H", header))]
    if script:
        args = ["-s", str(ROOT / "bench" / "wrk" / script)]
    env = {**os.environ, "TOKEN": TOKEN, "MAX_ID": str(CUSTOMERS)}
    subprocess.run([binary, "-t2", f"-c{connections}", "-d3s", *args, url], check=True, capture_output=True, env=env)
    cpu_before = server.cpu_seconds()
    out = subprocess.run(
        [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *args, url],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    cpu = server.cpu_seconds() - cpu_before
    lines = [line.strip() for line in out.splitlines()]
    errors = "; ".join(line for line in lines if "Non-2xx" in line or "Socket errors" in line)

    def percentile(name: str) -> float:
        return next(_wrk_duration_ms(line.split()[1]) for line in lines if line.startswith(name))

    requests = int(next(line.split()[0] for line in lines if "requests in" in line))
    p50, p99 = percentile("50%"), percentile("99%")
    return {
        "connections": connections,
        "rps": float(next(line.split()[1] for line in lines if line.startswith("Requests/sec"))),
        "p50": p50,
        "p99": p99,
        "tail": p99 / p50,
        "max": _wrk_duration_ms(next(line.split()[3] for line in lines if line.startswith("Latency"))),
        "errors": errors or "none",
        "cpu_ms_per_request": 1000 * cpu / max(1, requests),
    }
