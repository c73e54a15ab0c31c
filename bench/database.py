"""The database `make bench` runs against: embedded (or BENCH_DATABASE_URL), its schema, the demo data,
and addresses through a proxy."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.config import CUSTOMERS  # noqa: E402
from swagger_server.db.embedded import EmbeddedPostgres  # noqa: E402
from swagger_server.db.migrate import upgrade  # noqa: E402
from swagger_server.db.seed import seed  # noqa: E402


def prepare_database(max_connections: int = 200, embedded: bool = False) -> tuple[str, EmbeddedPostgres | None, int]:
    """A seeded database: BENCH_DATABASE_URL, or (always, with `embedded`) an embedded server."""
    url = None if embedded else os.environ.get("BENCH_DATABASE_URL")
    pg = None
    if not url:
        pg = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="bench-pg-")) / "data",
            settings={"max_connections": str(max_connections), "shared_buffers": "256MB"},
        )
        pg.start()
        conn = psycopg2.connect(pg.url())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        url = pg.url("bench")
    upgrade(url)
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers")
        seeded = cur.fetchone()[0]
    conn.close()
    if not seeded:
        seed(url, customers=CUSTOMERS, products=1_000, orders=20_000, quiet=True)
    port = pg.port if pg else int(url.rsplit(":", 1)[1].split("/")[0])
    return url, pg, port


def via(url: str, port: int) -> str:
    head, tail = url.rsplit(":", 1)
    return f"{head}:{port}/{tail.split('/', 1)[1]}"
