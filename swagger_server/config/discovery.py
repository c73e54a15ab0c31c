"""Where the database is when nothing is configured: `make run`'s embedded PostgreSQL, found by the
file it writes while running."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from swagger_server.config.settings import DEFAULT_CONFIG


def names_a_server(environ: Mapping[str, str] | None = None) -> str | None:
    """What names a database server, if anything does: DATABASE_URL, or [POSTGRES] host/url in the
    config file. None means nothing does (`make run` then starts an embedded PostgreSQL)."""
    env = os.environ if environ is None else environ
    if env.get("DATABASE_URL"):
        return "DATABASE_URL (environment)"
    path = Path(env.get("APP_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        return None
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return None  # load_settings reports it
    for key in ("url", "host"):
        if parser.has_option("POSTGRES", key) and parser.get("POSTGRES", key).strip():
            return f"[POSTGRES] {key} in {path}"
    return None


# Written by `make run` (scripts/run.py) while its embedded PostgreSQL runs, removed when it stops.
DATA_DIR = Path(__file__).resolve().parents[2] / ".data"
EMBEDDED_URL_FILE = DATA_DIR / "database-url"


def embedded_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The URL of `make run`'s embedded server, when it is running and nothing else names a server."""
    if names_a_server(environ) is not None:
        return None
    if not EMBEDDED_URL_FILE.exists() or not (DATA_DIR / "postgres" / "postmaster.pid").exists():
        return None
    return EMBEDDED_URL_FILE.read_text().strip() or None
