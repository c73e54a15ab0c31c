"""`make bench-stages`: where a request's worker CPU goes, in µs per request, stage by stage.

One worker of ours under gunicorn.conf.py (as shipped: access log on, 4 handler threads), wrk at 16
connections on an endpoint for STAGES_SECONDS (20), and py-spy sampling that worker meanwhile
(`--gil`: only samples of the thread holding the GIL, i.e. the worker's Python CPU; `--nonblocking`:
the worker is never paused). Each sample is given to a stage by its innermost frame that belongs to
one (below; frames of the standard library's plumbing pass to their caller), and a stage's µs per
request is its share of the samples times the worker's CPU per request (utime + stime over the run,
from /proc, divided by the answers wrk counted). Loopback only; stops by itself.

    make bench-stages                          # GET /api/customers/{id} (random ids) and /api/health
    .venv/bin/python bench/stages.py --raw     # also print the top frames of each stage
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.database import prepare_database  # noqa: E402
from bench.drivers import wrk  # noqa: E402
from bench.servers import ours  # noqa: E402

SECONDS = int(os.environ.get("STAGES_SECONDS", "20"))
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")

# (stage, pattern on "function (file)"), tried from a sample's innermost frame outwards; the first
# frame that matches any rule names the stage. Order matters only within one frame.
RULES: list[tuple[str, str]] = [
    ("serialisation (JSON)", r"json/encoder|json/__init__.py|orjson|jsonif"),
    ("metrics (prometheus_client)", r"prometheus_client|observability/metrics"),
    ("access log (writer thread)", r"observability/logs"),
    ("tracing", r"observability/tracing|opentelemetry"),
    ("query (psycopg2, cursor)", r"db/connection|db/queries|psycopg2"),
    ("pool checkout and return", r"db/pool|db/checkout|db/pool_types|request_scope|db/database"),
    ("ETag and answer", r"controllers/conditional|controllers/reply"),
    ("controller", r"controllers/"),
    ("validation (parameters, body)", r"validation\.py|connexion/validators|jsonschema|request_validation|uri_parsing"),
    ("security (token)", r"security\.py|connexion/security|middleware/security"),
    ("routing (Connexion router)", r"connexion/middleware/routing|starlette/routing|swagger_server/pipeline/routing"),
    ("routing (Swagger UI mount)", r"swagger_ui"),
    ("Flask: request context, URL map, response", r"[(/]flask/|[(/]werkzeug/"),
    (
        "Connexion's Flask side (parameters, response)",
        r"connexion/frameworks|connexion/decorators|connexion/operations",
    ),
    ("hand-off to and from the handler thread", r"handlers\.py|a2wsgi"),
    ("request gate", r"swagger_server/pipeline/gate"),
    ("CORS", r"middleware/cors"),
    (
        "error and context middlewares",
        r"middleware/exceptions|middleware/errors|middleware/context|middleware/lifespan|connexion/middleware/main|connexion/context",
    ),
    ("observability middleware (id, log line, metrics call)", r"observability/middleware"),
    ("HTTP parse and send (uvicorn, httptools)", r"uvicorn|httptools|server\.py"),
    ("Connexion middleware plumbing", r"connexion/"),
    ("Starlette plumbing", r"starlette/"),
    ("event loop (asyncio, uvloop)", r"asyncio/|uvloop"),
]
_COMPILED = [(stage, re.compile(pattern)) for stage, pattern in RULES]


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, pattern in _COMPILED:
            if pattern.search(frame):
                return stage
    return "other (threads, GC, interpreter)"


def profile(path: str | None, script: str | None, url: str) -> dict:
    """One worker, wrk on `path` (or a wrk Lua `script`), py-spy on the worker: samples per stage."""
    server = ours("stages", url, WEB_CONCURRENCY=1)
    try:
        worker = server.workers()[0]
        # Warm-up: every code path compiled and cached before the samples count.
        wrk(server, path or "/", connections=16, seconds=3, script=script)
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        spy = subprocess.Popen(
            [
                PY_SPY,
                "record",
                "--pid",
                str(worker.pid),
                "--gil",
                "--nonblocking",
                "--rate",
                "250",
                "--format",
                "raw",
                "--duration",
                str(SECONDS + 2),
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = wrk(server, path or "/", connections=16, seconds=SECONDS, script=script)
        spy.wait(timeout=SECONDS + 30)
        samples: collections.Counter = collections.Counter()
        frames_by_stage: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue  # a frame name with a line break in it (py-spy prints it as is)
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            stage = classify(frames)
            samples[stage] += int(count)
            frames_by_stage[stage][frames[-1] if frames else "?"] += int(count)
        if os.environ.get("STAGES_KEEP"):
            print(f"raw samples kept: {raw}", file=sys.stderr)
        else:
            raw.unlink()
    finally:
        server.stop()
    return {"wrk": result, "samples": samples, "frames": frames_by_stage}


def table(name: str, measured: dict, show_frames: bool) -> str:
    cpu_us = measured["wrk"]["cpu_ms_per_request"] * 1000
    total = sum(measured["samples"].values()) or 1
    lines = [
        f"### {name}",
        "",
        f"wrk 16 connections, {SECONDS} s, one worker: {measured['wrk']['rps']:.0f} req/s, "
        f"worker CPU **{cpu_us:.0f} µs per request**; {total} GIL-holding samples.",
        "",
        "| stage | share | µs per request |",
        "|---|---:|---:|",
    ]
    for stage, count in measured["samples"].most_common():
        lines.append(f"| {stage} | {count / total:.1%} | {cpu_us * count / total:.0f} |")
        if show_frames:
            for frame, n in measured["frames"][stage].most_common(6):
                lines.append(f"|   {frame[:110]} | {n / total:.1%} | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if not PY_SPY or not shutil.which("wrk"):
        print("needs py-spy (make bench installs it) and wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    show_frames = "--raw" in sys.argv
    url, pg, _ = prepare_database()
    try:
        out = []
        if "--health" not in sys.argv:
            out.append(table("GET /api/customers/{id}", profile(None, "random_customer.lua", url), show_frames))
        if "--db" not in sys.argv:
            out.append(table("GET /api/health", profile("/api/health", None, url), show_frames))
    finally:
        if pg is not None:
            pg.destroy()
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
