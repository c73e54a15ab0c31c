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
import time
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
    run = subprocess.Popen(
        [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *args, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(seconds - 1)  # near the end: every connection open, most of the requests counted
    per_worker = spread(server.port)
    out, err = run.communicate()
    if run.returncode:
        raise subprocess.CalledProcessError(run.returncode, run.args, out, err)
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
        "tail": p99 / p50 if p50 else float("inf"),  # every answer under wrk's resolution
        "max": _wrk_duration_ms(next(line.split()[3] for line in lines if line.startswith("Latency"))),
        "errors": errors or "none",
        "cpu_ms_per_request": 1000 * cpu / max(1, requests),
        "spread": per_worker,
    }


def spread(port: int) -> dict | None:
    """How the server's open connections and the bytes received on them are spread over its worker
    processes (`ss`, the kernel's view, so every server is measured the same way): per worker, the
    number of connections and its share of the bytes (all requests of a run are one size or near it, so
    that is its share of the requests); and the largest deviation from even of each, in %. None if `ss`
    is absent."""
    if not shutil.which("ss"):
        return None
    out = subprocess.run(
        ["ss", "-tnpiH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    conns: dict[int, int] = {}
    received: dict[int, int] = {}
    pid = None
    for line in out.splitlines():
        if found := re.search(r"pid=(\d+)", line):
            pid = int(found.group(1))
            conns[pid] = conns.get(pid, 0) + 1
        elif pid is not None and (got := re.search(r"bytes_received:(\d+)", line)):
            received[pid] = received.get(pid, 0) + int(got.group(1))
    if not conns:
        return None
    n, total_bytes = len(conns), max(1, sum(received.values()))

    def off_even(values) -> float:
        even = sum(values) / n
        return 100 * max(abs(v - even) for v in values) / even if even else 0.0

    return {
        "connections": sorted(conns.values(), reverse=True),
        "requests_share": sorted((round(100 * received.get(p, 0) / total_bytes) for p in conns), reverse=True),
        "connections_off_even": off_even(list(conns.values())),
        "requests_off_even": off_even([received.get(p, 0) for p in conns]),
    }
