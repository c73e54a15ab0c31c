"""The database side of the tests: the server we did not start, connections for asserting rows, a
module's own database, the demo seed, a copy of the schema files, and the app's settings for tests."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg2

from swagger_server.config import load_settings
from swagger_server.db.migrate import upgrade
from tests.support.auth import TOKEN

TEST_DB = "store_test"
TESTS = Path(__file__).resolve().parent.parent
EMPTY_INI = str(TESTS / "empty.ini")


class ExternalServer:
    """A server we did not start (TEST_DATABASE_URL): usable, but not restartable."""

    restartable = False

    def __init__(self, url: str):
        self._url = urllib.parse.urlsplit(url)
        self.port = self._url.port or 5432

    def url(self, dbname: str = "postgres") -> str:
        return urllib.parse.urlunsplit(self._url._replace(path="/" + dbname))


def admin_connect(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def schema_database(pg_server, name: str) -> str:
    """The URL of database `name`, made anew with the schema applied (a module's database of its own)."""
    admin = admin_connect(pg_server.url("postgres"))
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    url = pg_server.url(name)
    upgrade(url)
    return url


def seed_demo(url: str, customers: int) -> None:
    """`db seed --customers N` (a tenth as many products, ten orders each) in a process of its own: COPY
    cannot run in a process where an app installed its psycopg2 wait callback (as this one may have)."""
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "APP_CONFIG": EMPTY_INI}
    done = subprocess.run(
        [sys.executable, "-m", "swagger_server", "db", "seed", "--customers", str(customers), "--quiet"],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def schema_dir(tmp_path: Path, upto: str | None = None, extra: dict[str, str] | None = None) -> Path:
    """A copy of the shipped schema files (those up to and including `upto`), plus `extra` files."""
    from swagger_server.db.migrate import SCHEMA_DIR

    folder = tmp_path / "schema"
    folder.mkdir(exist_ok=True)
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        if upto is None or path.name <= upto:
            (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name, text in (extra or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def query(conn, sql: str, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def make_settings(database_url: str, **overrides):
    """Settings for tests: response validation on, short timeouts, a small pool."""
    env = {"DATABASE_URL": database_url, "API_TOKENS": TOKEN, "APP_CONFIG": EMPTY_INI}
    base = load_settings(env)
    sections = {
        # Dashboard reports read for every request (tests change the store between two reads), and no
        # roller borrowing pool connections behind the pool tests' counts: the tests of each turn it on.
        "api": {"validate_responses": True, "dashboard_max_age": 0, "dashboard_rollup_interval": 0},
        "pool": {
            "min_connections": 1,
            "max_connections": 4,
            "timeout": 1.0,
            "statement_timeout_ms": 3000,
            "check_idle_after": 0.5,
            "reconnect_max_delay": 0.5,
        },
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return base.with_overrides(**sections)


def via_port(url: str, port: int) -> str:
    """`url` reached through another port on loopback (a fault proxy in front of the server)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
