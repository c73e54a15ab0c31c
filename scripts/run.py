"""`make run`: start the service on this machine, with an embedded PostgreSQL unless one is configured.

Steps: start PostgreSQL (embedded, data in .data/postgres) when neither DATABASE_URL nor config.ini
names a server; create the database; apply the schema; seed demo data on the first run; start gunicorn
with gunicorn.conf.py; print the Swagger UI URL and a demo token. Ctrl-C stops everything it started.

With a database of your own (DATABASE_URL or config.ini), it changes nothing in it unless asked:
`SETUP_DB=1 make run` applies the schema and seeds demo data if the store is empty.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swagger_server.config import (  # noqa: E402
    DATA_DIR,
    EMBEDDED_URL_FILE,
    QUIET_NOTES,
    ConfigError,
    embedded_url,
    load_settings,
    log_notes,
    names_a_server,
)

DATA = DATA_DIR


def start_embedded(env, started: list):
    import psycopg2

    from swagger_server.db.embedded import EmbeddedPostgres

    DATA.mkdir(exist_ok=True)
    pg = EmbeddedPostgres(
        DATA / "postgres", settings={"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    )
    say(f"starting embedded PostgreSQL (data in {pg.datadir}) ...")
    pg.start()
    started.append(pg)  # from here on, the caller stops it whatever happens next
    conn = psycopg2.connect(pg.url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'store'")
        if cur.fetchone() is None:
            cur.execute("CREATE DATABASE store")
    conn.close()
    env["DATABASE_URL"] = pg.url("store")
    # For `python -m swagger_server db ...` and check-config in another terminal while this runs.
    EMBEDDED_URL_FILE.write_text(env["DATABASE_URL"] + "\n")
    return pg


def demo_token(env) -> str:
    if env.get("API_TOKENS"):
        return env["API_TOKENS"].split(",")[0].strip()
    DATA.mkdir(exist_ok=True)
    path = DATA / "demo-token"
    if not path.exists():
        path.write_text("demo-" + secrets.token_urlsafe(16))
        path.chmod(0o600)
    env["API_TOKENS"] = path.read_text().strip()
    return env["API_TOKENS"]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _sources() -> dict[Path, float]:
    files = [*(ROOT / "swagger_server").rglob("*.py"), ROOT / "swagger" / "swagger.yaml", ROOT / "gunicorn.conf.py"]
    return {f: f.stat().st_mtime for f in files if f.exists()}


def reload_on_change(gunicorn: subprocess.Popen, every: float = 1.0) -> None:
    """`make dev`: when a module, the spec or gunicorn.conf.py changes, SIGHUP gunicorn: the reload it
    documents for deploying new code, which serves the code and the spec on disk with no request lost
    (tests/deploy/test_reload.py). (gunicorn's own --reload stops a uvicorn worker and starts none.)"""
    seen = _sources()
    while gunicorn.poll() is None:
        time.sleep(every)
        now = _sources()
        changed = sorted(str(f.relative_to(ROOT)) for f in now.keys() | seen.keys() if now.get(f) != seen.get(f))
        if changed:
            say(f"reloading: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} changed")
            gunicorn.send_signal(signal.SIGHUP)
            seen = now


def serving(port: int, gunicorn: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Wait until /api/health answers (True) or gunicorn exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and gunicorn.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return gunicorn.poll() is None


def say(message: str) -> None:
    """Print, unless stdout is gone (the terminal or a pipe closed on Ctrl-C)."""
    try:
        print(message, flush=True)
    except OSError:
        pass


def main() -> int:
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")  # a person is reading; production keeps one JSON line a request
    named = names_a_server(env)
    token = demo_token(env)
    try:
        # Validated before anything is started, so that a bad value leaves nothing running.
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # The notes once, here; the steps below (db upgrade, seed, gunicorn) read the same settings.
    log_notes(settings, env, say=lambda note: say(f"note: {note}"))
    env[QUIET_NOTES] = "1"
    port = settings.server.port
    if not port_free(settings.server.host, port):
        print(f"port {port} is already in use: stop what listens there, or set PORT=... make run", file=sys.stderr)
        return 2
    running = embedded_url(env) if named is None else None
    if running:
        print(f"make run is already running here (its PostgreSQL: {running}); stop it first", file=sys.stderr)
        return 2
    pg = None
    started: list = []  # the embedded server, as soon as it runs
    py = sys.executable
    gunicorn = None
    try:
        if named is None:
            start_embedded(env, started)
            pg = started[0]
            settings = load_settings(env)
        else:
            say(f"using the database named by {named}: {settings.database.safe_dsn()}")
        port = settings.server.port
        if pg is not None or env.get("SETUP_DB") == "1":
            for step in (["db", "upgrade"], ["db", "seed", "--if-empty"]):
                subprocess.run([py, "-m", "swagger_server", *step], env=env, cwd=ROOT, check=True)
        else:
            say(
                "your database is used as it is: no schema applied, no demo data (SETUP_DB=1 make run does both);"
                " while its schema is behind this code, API calls answer 503 schema-behind naming `db upgrade`"
            )
        # Its own session: Ctrl-C reaches only us, and we stop gunicorn gracefully (SIGTERM), not abruptly.
        gunicorn = subprocess.Popen(
            [py, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], env=env, cwd=ROOT, start_new_session=True
        )
        if env.get("RELOAD") == "1":
            threading.Thread(target=reload_on_change, args=(gunicorn,), daemon=True).start()
        # The banner once the service answers, after gunicorn's start-up lines, not before.
        if not serving(port, gunicorn):
            return gunicorn.wait()
        database = settings.database.safe_dsn() + ("   (embedded; also in .data/database-url)" if pg else "")
        print(
            f"\n  Swagger UI:  http://localhost:{port}/api/ui/\n  API:         http://localhost:{port}/api/customers"
            f"\n  Demo token:  {token}   (Authorize in Swagger UI, or -H 'Authorization: Bearer {token}')"
            f"\n  Database:    {database}"
            f"\n  Stop:        Ctrl-C\n",
            flush=True,
        )
        return gunicorn.wait()
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    finally:
        # Cleanup must finish: a second Ctrl-C, or a closed stdout (`make run | tee` loses tee on
        # Ctrl-C), must not leave gunicorn or PostgreSQL running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gunicorn is not None and gunicorn.poll() is None:
            gunicorn.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish, pools close
            try:
                gunicorn.wait(timeout=settings.server.graceful_timeout + 5)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        pg = started[0] if started else None
        if pg is not None:
            say("stopping embedded PostgreSQL ...")
            EMBEDDED_URL_FILE.unlink(missing_ok=True)
            pg.stop()
            say("stopped.")


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
