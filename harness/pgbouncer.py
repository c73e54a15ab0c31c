"""PgBouncer in transaction mode on loopback, for running the API against it (Debian's `pgbouncer`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg2

from harness.waiting import wait_listening
from swagger_server.db.embedded import SYSTEM_USER, free_port

BINARY = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


class PgBouncer:
    """One pgbouncer process in front of 127.0.0.1:`target_port`; every database is forwarded."""

    def __init__(self, workdir: Path, target_port: int, *, pool_size: int = 10, max_client_conn: int = 400):
        self.dir = Path(workdir)
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""
[databases]
* = host=127.0.0.1 port={target_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
admin_users = postgres
auth_file = {self.dir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
server_reset_query =
logfile = {self.dir / "pgbouncer.log"}
pidfile = {self.dir / "pgbouncer.pid"}
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> PgBouncer:
        command = [BINARY, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it drops to the embedded server's user.
            command[1:1] = ["-u", SYSTEM_USER]
            for path in [self.dir, *self.dir.parents]:
                path.chmod(path.stat().st_mode | 0o055)
            shutil.chown(self.dir, SYSTEM_USER)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.process, self.port, "pgbouncer")
        return self

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def show(self, what: str) -> list[dict]:
        """`SHOW CLIENTS`, `SHOW SERVERS`, ... on PgBouncer's admin console, as dicts."""
        conn = psycopg2.connect(self.url("pgbouncer"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [c.name for c in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
