"""gunicorn settings. Every value comes from Settings (config.ini + environment), so there is one source."""

import atexit
import importlib
import os
import shutil
import sys
import tempfile
import time
import types

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

# The master holds the code its workers run. At start and at each reload (SIGHUP: gunicorn's documented
# way to deploy new code) this file imports the service from disk and checks it: the settings, the
# tracing exporter, the spec against its controllers, wsgi.py (compiled, and the app built once in a
# forked child: _builds). The workers are forked with what passed,
# already imported (and the spec and settings already read: their caches), so none can fail to start
# on code the master has not seen load. A reload that fails its checks (a syntax error, a missing
# module, a spec error, a bad setting, an app that does not build) logs one error naming the cause,
# keeps the last good code, and the
# workers go on serving it; gunicorn's master never exits on it (that would orphan its workers with
# their metrics directory removed under them). A later SIGHUP with fixed code serves that.
# tests/deploy/test_reload.py proves each case over real gunicorn.
_MASTER = sys.modules.setdefault("_store_api_master", types.ModuleType("_store_api_master"))  # survives reloads
_reloading = hasattr(_MASTER, "modules")


def _ours(name: str) -> bool:
    return name == "swagger_server" or name.startswith("swagger_server.")


class _Wsgi(types.ModuleType):
    """wsgi.py as the master compiled it, run in each worker when gunicorn first asks for its `app`
    (or post_fork for the pool): the worker never reads a wsgi.py the master did not check."""

    def __init__(self, code):
        super().__init__("wsgi")
        self.__file__ = code.co_filename
        self.__dict__["_store_api_code"] = code

    def __getattr__(self, name):
        code = self.__dict__.pop("_store_api_code", None)
        if code is None or name.startswith("__"):
            raise AttributeError(name)
        exec(code, self.__dict__)  # in the worker: builds the app (wsgi.py), once
        return getattr(self, name)


def _load():
    """Import the service from disk and check it; (settings, compiled wsgi.py). Raises what fails."""
    for _name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[_name]  # the code on disk, not the last import of it
    from swagger_server.app import checked_spec
    from swagger_server.config import log_notes, process_settings
    from swagger_server.observability.tracing import exporter_name

    settings = process_settings()  # OTEL_TRACES_EXPORTER next: it names an exporter this service has
    exporter_name(os.environ)
    checked_spec()  # every operationId has its controller function
    importlib.import_module(worker_class.rsplit(".", 1)[0])  # the worker class gunicorn is about to load
    with open("wsgi.py", encoding="utf-8") as source:
        code = compile(source.read(), os.path.abspath("wsgi.py"), "exec")
    _builds(code)
    return settings, code, log_notes


class _AppDoesNotBuild(Exception):
    pass


def _builds(code, timeout: float = 60.0) -> None:
    """Run wsgi.py (the app built, as a worker builds it) in a child forked for the purpose, so that
    what fails only when it runs fails here, not in every new worker. Raises _AppDoesNotBuild."""
    import select
    import signal

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: build, say what failed, exit without running any of the master's exit hooks
        os.close(read)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="store-api-check-")  # not the workers'
        status = 0
        try:
            exec(code, {"__name__": "wsgi", "__file__": code.co_filename})
        except BaseException as exc:  # noqa: BLE001 - reported to the master, one line
            os.write(write, _cause(exc).encode()[:2000])
            status = 1
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
        os._exit(status)
    os.close(write)
    said = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([read], [], [], left)[0]:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        said += chunk
    os.close(read)
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise _AppDoesNotBuild(said.decode(errors="replace") or f"the app did not build in {timeout:g} s")


def _cause(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = os.path.relpath(exc.filename) if exc.filename else "?"
        return f"{type(exc).__name__} in {where} line {exc.lineno}: {exc.msg}"
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if kind == "_AppDoesNotBuild":
        return f"the app does not build: {text}"
    return {"ConfigError": "configuration error", "SpecError": "spec error", "TracingError": "configuration error"}.get(
        kind, kind
    ) + (f": {text}" if text else "")


worker_class = "swagger_server.serving.worker.StoreUvicornWorker"
try:
    _settings, _wsgi_code, _log_notes = _load()
except BaseException as _exc:  # noqa: BLE001 - whatever stops the code loading is reported, one line
    if isinstance(_exc, KeyboardInterrupt):
        raise
    if not _reloading:
        # At start: one clear line, not a traceback, and a non-zero exit before any worker starts.
        print(_cause(_exc), file=sys.stderr)
        sys.exit(2)
    print(
        f"reload refused: {_cause(_exc)}; the workers go on serving the last good code (fix it and send SIGHUP again)",
        file=sys.stderr,
        flush=True,
    )
    for _name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[_name]
    sys.modules.update(_MASTER.modules)
    _settings, _wsgi_code = _MASTER.settings, _MASTER.wsgi_code
else:
    _MASTER.modules = {n: m for n, m in sys.modules.items() if _ours(n)}
    _MASTER.settings, _MASTER.wsgi_code = _settings, _wsgi_code
    # Once per start and per good reload, here in the master (the workers inherit the settings).
    _log_notes(_settings, say=lambda note: print(f"note: {note}", file=sys.stderr, flush=True))
sys.modules["wsgi"] = _Wsgi(_wsgi_code)

from swagger_server.db.budget import BudgetExceeded, check_connection_budget  # noqa: E402

# Each worker's count of open connections, shared with the others, so that a worker holding more than
# its share leaves new connections to them (swagger_server/serving/acceptor.py). Made here, before any fork; a
# reload makes a new table for its new workers, and each worker keeps the one it was given.
from swagger_server.serving.acceptor import Table  # noqa: E402

_connections = Table()

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
# settings do nothing under uvicorn): see swagger_server/serving/protocol.py. Set here, inherited by the workers.
# (worker_class is set above, before the checks import its module.)

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
    """Each worker gets its own pool, made after the fork so no libpq socket is shared.

    First, the worker's own signal handling (uvicorn's init_signals: the default action for each, USR1
    reopens the logs), which init_process would set only after this hook: post_fork runs with the
    master's handlers, which queue a signal into this process's copy of the master's queue, never
    read: a SIGTERM during the import and the pool's opening would be lost, and the worker would serve
    on until the master killed it at graceful_timeout
    (tests/deploy/test_gunicorn.py::test_a_sigterm_while_a_worker_boots_stops_it_at_once)."""
    worker.init_signals()
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
