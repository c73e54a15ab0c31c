"""Store API: a spec-first PostgreSQL-backed HTTP API (Connexion 3, psycopg2, gunicorn).

`create_app` and `get_database` live in swagger_server/app.py and are imported on first use, so
that the database layer (`swagger_server.db`) imports without Connexion or Flask.
"""

from __future__ import annotations

import warnings

# Connexion imports Starlette's test client at import time, which warns about httpx on every start
# (CLI, gunicorn). It is not ours to fix and says nothing about this service. Set here, before any
# module of ours imports Connexion.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")

__all__ = ["create_app", "get_database"]


def __getattr__(name: str):
    if name in __all__:
        from swagger_server import app

        return getattr(app, name)
    raise AttributeError(f"module 'swagger_server' has no attribute {name!r}")
