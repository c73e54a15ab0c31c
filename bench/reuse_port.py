"""Connections lost across reloads: gunicorn's shared listening socket (our FairAcceptor spreads it,
swagger_server/serving/acceptor.py) against `reuse_port` (a socket per worker, spread by the kernel),
with `net.ipv4.tcp_migrate_req` 0 and 1. Sixteen clients open a connection per request to
`/api/health` while the master is sent SIGHUP three times, 3 s apart; every reset or refusal is
counted. Needs root (it sets the sysctl, and puts back what it found). Loopback only, about a minute.

    sudo .venv/bin/python bench/reuse_port.py
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.database import prepare_database  # noqa: E402
from bench.servers import ours  # noqa: E402

SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")
REQUEST = b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def client(port: int, stop: threading.Event, counts: dict) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(REQUEST)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
            key = "ok" if data.startswith(b"HTTP/1.1 200") else "other answer"
        except OSError as exc:  # reset, refused, timed out
            key = type(exc).__name__
        counts[key] = counts.get(key, 0) + 1


def measure(url: str, label: str, migrate: int, reuse: bool) -> None:
    SYSCTL.write_text(str(migrate))
    server = ours("reuse-port", url, WEB_CONCURRENCY="2", **({"GUNICORN_CMD_ARGS": "--reuse-port"} if reuse else {}))
    counts = {"ok": 0}
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(server.port, stop, counts)) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2)  # load first
    for _ in range(3):
        server.process.send_signal(signal.SIGHUP)
        time.sleep(3)  # the new workers take over, the old ones finish
    stop.set()
    for thread in threads:
        thread.join(10)
    server.stop()
    print(f"{label:45} {counts}", flush=True)


def main() -> int:
    found = SYSCTL.read_text().strip()
    url, pg, _ = prepare_database(embedded=True)
    try:
        measure(url, "shared socket (FairAcceptor), migrate_req=0", 0, False)
        measure(url, "reuse_port, migrate_req=0", 0, True)
        measure(url, "reuse_port, migrate_req=1", 1, True)
    finally:
        SYSCTL.write_text(found)
        if pg is not None:
            pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
