"""Real gunicorn through gunicorn.conf.py: one pool per worker, seen from the database; clean shutdown."""

from __future__ import annotations

import signal

import psutil
import pytest
import requests

from harness.gunicorn import healthy
from harness.waiting import wait_until
from swagger_server.db.database import application_name
from swagger_server.db.embedded import free_port
from tests.support.auth import AUTH
from tests.support.database import query
from tests.support.servers import Gunicorn, gunicorn_env, refused_start, start_gunicorn

pytestmark = pytest.mark.slow


def test_one_pool_per_worker_and_nothing_left_after_shutdown(database_url, store):
    port = free_port()
    server = start_gunicorn(gunicorn_env(database_url, port))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(base), timeout=20, message="gunicorn to serve")
        workers = wait_until(
            lambda: (
                len(psutil.Process(server.pid).children()) == 2
                and [p.pid for p in psutil.Process(server.pid).children()]
            ),
            timeout=10,
        )
        expected = {application_name(pid) for pid in workers}

        def pools():
            """Connections of this gunicorn's processes (the test process's own apps may hold some too)."""
            rows = query(
                store,
                "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) GROUP BY 1",
                (sorted(expected | {application_name(server.pid)}),),
            )
            return dict(rows)

        # Each worker warms min_connections=2 right after the fork, before any request.
        try:
            wait_until(lambda: pools() == {name: 2 for name in expected}, timeout=10)
        except AssertionError:
            raise AssertionError(f"expected two connections for each of {expected}, found {pools()}") from None
        assert application_name(server.pid) not in pools()  # the master holds none
        for _ in range(20):
            assert requests.get(f"{base}/api/customers/1", headers=AUTH, timeout=5).status_code == 200
        answered = {
            requests.get(f"{base}/api/health/db", headers=AUTH, timeout=5).json()["pool"]["pid"] for _ in range(20)
        }
        assert answered <= set(workers)
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    wait_until(
        lambda: (
            query(store, "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)", (list(expected),))[
                0
            ][0]
            == 0
        ),
        timeout=5,
        message="worker connections to close",
    )


def test_refuses_to_start_when_the_connection_budget_is_exceeded(database_url):
    port = free_port()
    code, _, err = refused_start(
        gunicorn_env(database_url, port, WEB_CONCURRENCY="12", DB_POOL_MAX_CONNECTIONS="10", WEB_THREADS="10")
    )
    assert code == 3
    assert "connection budget exceeded: 12 workers x 10 connections = 120" in err
    assert "DB_POOL_MAX_CONNECTIONS<=" in err and "WEB_CONCURRENCY<=" in err


def test_bad_configuration_stops_gunicorn_with_one_line(database_url):
    code, _, err = refused_start(gunicorn_env(database_url, free_port(), DB_POOL_TIMEOUT="soon"))
    assert code == 2
    assert err.strip().splitlines() == [
        "configuration error: DB_POOL_TIMEOUT (environment): expected a number, got 'soon'"
    ]


def test_gunicorn_listens_on_loopback_unless_told_otherwise(database_url):
    """make run on a laptop serves no one else; HOST=0.0.0.0 (the image, the manifests) opens it up.
    Read from the master's own listening socket, so either answer can be seen."""
    for extra, expected in (({}, "127.0.0.1"), ({"HOST": "0.0.0.0"}, "0.0.0.0")):
        server = Gunicorn(database_url, **extra)
        try:
            listening = {
                c.laddr.ip
                for c in psutil.Process(server.process.pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
            }
            assert listening == {expected}, (extra, listening)
        finally:
            server.stop()


def test_the_image_and_the_manifests_listen_on_every_interface_explicitly():
    """The default is loopback: the container and the pod must say 0.0.0.0 themselves, or nothing
    outside them reaches the API."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert "HOST=0.0.0.0" in (root / "Dockerfile").read_text()
    manifest = (root / "deploy" / "k8s" / "api-deployment.yaml").read_text()
    assert '- name: HOST\n              value: "0.0.0.0"' in manifest


# Our gunicorn.conf.py, with its post_fork held open 5 s after our hook ran: the window in which a slow
# import or pool opening would be, made wide enough that the SIGTERM lands in it on every run.
_HELD_POST_FORK = """
import runpy, time
globals().update({k: v for k, v in runpy.run_path(CONF).items() if not k.startswith("__")})
_ours = post_fork


def post_fork(server, worker):
    _ours(server, worker)
    server.log.info("worker %s: post_fork held", worker.pid)
    time.sleep(5)  # the window: the test's SIGTERM arrives in it
    server.log.info("worker %s: post_fork released", worker.pid)
"""


@pytest.mark.timing  # a lost SIGTERM costs graceful_timeout (20 s) by construction; a kept one about 1 s
def test_a_sigterm_while_a_worker_boots_stops_it_at_once(database_url, tmp_path):
    """gunicorn runs post_fork (our pool opening, the app's import) in the new worker with the master's
    signal handlers, which queue a signal into the worker's copy of the master's queue: lost. A
    SIGTERM that arrived then left that worker serving until the master killed it at graceful_timeout,
    20 s (every test that stopped a server just started paid it). Here the worker's post_fork is held
    open after our hook ran, the SIGTERM is sent then, and the master must be gone well within
    graceful_timeout, the worker never leaving its post_fork."""
    import threading
    import time

    from harness import gunicorn
    from tests.support.servers import ROOT

    conf = tmp_path / "held.conf.py"
    conf.write_text(f"CONF = {str(ROOT / 'gunicorn.conf.py')!r}\n" + _HELD_POST_FORK)
    env = gunicorn_env(database_url, free_port(), WEB_CONCURRENCY=1)
    process = gunicorn.start(["-c", str(conf), "wsgi:app"], env, cwd=ROOT)
    lines: list[str] = []
    sent = threading.Event()

    def read():
        for line in process.stderr:
            lines.append(line)
            if "post_fork held" in line and not sent.is_set():
                process.send_signal(signal.SIGTERM)
                sent.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert sent.wait(60), "".join(lines)[-2000:]
    began = time.monotonic()
    try:
        process.wait(timeout=15)
    except Exception:
        process.kill()
        process.wait()
        raise AssertionError(f"gunicorn still running 15 s after SIGTERM: {''.join(lines)[-3000:]}") from None
    took = time.monotonic() - began
    reader.join(5)
    text = "".join(lines)
    assert "Handling signal: term" in text, text[-3000:]
    assert "post_fork released" not in text, ("the worker outlived the SIGTERM", text[-3000:])
    assert took < 10, (took, text[-3000:])
