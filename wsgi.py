"""The production entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

Builds the app without touching the database, and exposes the hooks gunicorn.conf.py calls so the
pool is made in each worker after the fork (never in the master, never shared across processes).
"""

from __future__ import annotations

from swagger_server import create_app, get_database
from swagger_server.config import process_settings

settings = process_settings()  # once per worker: gunicorn.conf.py checked the same file and environment
app = create_app(settings)


def open_worker_pool() -> None:
    """gunicorn post_fork: give this worker its own pool, warming `min` connections in the background."""
    get_database(app).open()


def close_worker_pool() -> None:
    """Close this worker's pool. Idempotent; the app's lifespan shutdown calls it too."""
    get_database(app).close()
