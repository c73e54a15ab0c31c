"""gunicorn settings. Every value comes from Settings (config.ini + environment), so there is one source."""

import atexit
import os
import shutil
import sys
import tempfile

# The run directory: what this gunicorn keeps while it runs (its control socket, and unless
# PROMETHEUS_MULTIPROC_DIR names another place, the workers' metrics files), STORE_API_RUN_DIR or a new
# temporary one, removed when the master exits. Not gunicorn's default ~/.gunicorn/gunicorn.ctl, which
# every gunicorn of the user would share.
_run_dir = os.environ.get("STORE_API_RUN_DIR") or tempfile.mkdtemp(prefix="store-api-run-")
os.makedirs(_run_dir, exist_ok=True)
_made_run_dir = not os.environ.get("STORE_API_RUN_DIR")
os.environ["STORE_API_RUN_DIR"] = _run_dir  # a reload (SIGHUP) runs this file again: the same directory
_master_pid = os.getpid()
# Removed when the master exits, however it exits (also a refusal at start); workers inherit this
# handler, hence the pid check.
atexit.register(lambda: os.getpid() == _master_pid and _made_run_dir and shutil.rmtree(_run_dir, ignore_errors=True))

# Metrics from every worker in one /metrics (prometheus_client multiprocess mode). Set before anything
# imports prometheus_client: it picks its storage when imported, and the workers inherit this process.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_run_dir, "metrics")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

control_socket = os.path.join(_run_dir, "gunicorn.ctl")

from swagger_server.config import ConfigError, log_notes, process_settings  # noqa: E402
from swagger_server.db.budget import BudgetExceeded, check_connection_budget  # noqa: E402

try:
    # The master's own settings (bind, workers, timeouts); each worker reads the same ones (wsgi.py).
    process_settings.cache_clear()  # a reload (SIGHUP) runs this file again: read them afresh
    _settings = process_settings()
except ConfigError as exc:
    # One clear line, not a traceback, and a non-zero exit before any worker starts.
    print(f"configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
try:  # OTEL_TRACES_EXPORTER names an exporter this service has (observability/tracing.py)
    from swagger_server.observability.tracing import TracingError, exporter_name

    exporter_name(os.environ)
except TracingError as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
# Once per start, here in the master (the workers inherit the settings and say nothing).
log_notes(_settings, say=lambda note: print(f"note: {note}", file=sys.stderr, flush=True))

# Every operationId must name a controller function; a missing one stops start-up here, in one line,
# not on the operation's first request.
from swagger_server.app import SpecError, checked_spec  # noqa: E402

try:
    checked_spec()  # at start and at each reload, before any worker starts
except SpecError as exc:
    print(f"spec error: {exc}", file=sys.stderr)
    sys.exit(2)

# Each worker's count of open connections, shared with the others, so that a worker holding more than
# its share leaves new connections to them (swagger_server/spread.py). Made here, before any fork; a
# reload makes a new table for its new workers, and each worker keeps the one it was given.
from swagger_server.spread import Table  # noqa: E402

_connections = Table()

# A reload (SIGHUP: gunicorn's documented way to deploy new code) must serve the code on disk. The checks
# above imported this service's modules into the master, and workers forked from it would inherit them,
# old code and old spec included (a new endpoint stayed 404). So the master forgets them here: each
# worker imports them afresh (and reads its settings once, from the same file and environment). The
# checks stay cheap: the third-party modules they pulled in stay imported, so workers still start warm;
# a dependency upgrade is a restart, not a reload. gunicorn imports the worker class after this file,
# and a reload runs this file first: that import, too, is of the code on disk.
for _name in [n for n in sys.modules if n in ("swagger_server", "wsgi") or n.startswith("swagger_server.")]:
    del sys.modules[_name]

# Where to listen. PORT overrides [GUNICORN] port, as platforms (Heroku, Cloud Run) expect. With
# [API] metrics_port set, /metrics is served only there (an internal port), and the API only here.
bind = [f"{_settings.server.host}:{_settings.server.port}"]
if _settings.api.metrics_port:
    bind.append(f"{_settings.server.host}:{_settings.api.metrics_port}")

# Processes, not threads, carry the load: each worker has its own GIL, event loop and pool.
# WEB_CONCURRENCY overrides; workers x [POOL] max_connections must fit the server (checked at start).
workers = _settings.server.workers

# Connexion 3 is an ASGI app. Measured on 2 cores, 2 workers, wrk -c32 (2026-11-22): the uvicorn worker
# (uvloop + httptools) served 2255 req/s on /api/health and 1354 on /api/customers/1, gunicorn's own
# "asgi" worker 2162 and 1313. Close, but consistently ahead, so uvicorn. Flask handlers run in a few
# threads inside each worker (swagger_server/pipeline/handlers.py).
#
# Ours adds limits on the request line, header size and header count (gunicorn's limit_request_*
# settings do nothing under uvicorn): see swagger_server/server.py. Set here, inherited by the workers.
worker_class = "swagger_server.server.StoreUvicornWorker"

# The app is imported in each worker, not the master: nothing can open a connection before the fork.
preload_app = False

# In-flight requests get this long to finish on SIGTERM before the worker is killed; the pool is
# closed after them (Connexion lifespan shutdown), so nothing is left in pg_stat_activity.
graceful_timeout = _settings.server.graceful_timeout
timeout = 30

# Keep-alive a little above typical load balancer idle timeouts is not needed on loopback; 5 s is fine.
keepalive = 5

loglevel = _settings.server.log_level
accesslog = None  # one line per request is the app's job (structured), not gunicorn's
errorlog = "-"


def on_starting(server):
    """Refuse to start when workers x max_connections would not fit in the database's free slots.
    Start with an empty metrics directory: files of an earlier run would be counted again."""
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))
    try:
        check_connection_budget(_settings, server.log)
    except BudgetExceeded as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        sys.exit(3)


def pre_fork(server, worker):
    """A slot in the connections table for the worker about to fork (one not held by a live worker)."""
    taken = {
        w.store_api_slot[1] for w in server.WORKERS.values() if getattr(w, "store_api_slot", (None,))[0] is _connections
    }
    worker.store_api_slot = (_connections, _connections.claim(taken))


def post_fork(server, worker):
    """Each worker gets its own pool, made after the fork so no libpq socket is shared."""
    import wsgi

    wsgi.open_worker_pool()
    server.log.info("worker %s: pool opened", worker.pid)


def worker_exit(server, worker):
    """Close the pool if this hook runs (sync workers). Under the uvicorn worker it does not;
    the app's lifespan shutdown closes the pool instead. Closing twice is harmless."""
    import wsgi

    wsgi.close_worker_pool()


def child_exit(server, worker):
    """A worker is gone: its live gauges (pool sizes) no longer count; its counters still do."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    table, slot = getattr(worker, "store_api_slot", (None, None))
    if slot is not None:
        table.free(slot)
