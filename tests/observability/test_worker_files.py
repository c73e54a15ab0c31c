"""A scrape reads every worker's metrics file, including one a worker has created and not yet sized.

prometheus_client creates a worker's file and sizes it a moment later; a scrape in between read 0
bytes and answered 500 for every metric (prometheus/client_python#1199), and a worker killed in that
moment left the empty file behind for good. Seen here as a 500 on /metrics while the second worker of
a fresh gunicorn was starting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from swagger_server.observability.metrics import WorkerFiles
from tests.support.servers import Gunicorn

# What a worker does: counts into its own file in the multiprocess directory (named by the variable
# before prometheus_client is imported), then exits.
_A_WORKER_COUNTS = (
    "from prometheus_client import CollectorRegistry, Counter\n"
    "Counter('store_api_probe', 'a worker counter', ['worker'], registry=CollectorRegistry()).labels('w').inc(3)\n"
)


def _samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_file_not_yet_sized_is_left_out_and_the_rest_is_read(tmp_path):
    directory = str(tmp_path)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
    subprocess.run([sys.executable, "-c", _A_WORKER_COUNTS], env=env, check=True, timeout=60)
    (tmp_path / "counter_4194303.db").write_bytes(b"")  # created, not yet sized (or its worker killed then)
    (tmp_path / "gauge_livesum_4194302.db").symlink_to(tmp_path / "removed")  # listed, then gone

    # The observer: prometheus_client's own collector fails the whole scrape on the empty file.
    default = CollectorRegistry()
    multiprocess.MultiProcessCollector(default, path=directory)
    with pytest.raises(Exception, match="unpack_from requires a buffer"):
        generate_latest(default)

    ours = CollectorRegistry()
    ours.register(WorkerFiles(directory))
    assert _samples(generate_latest(ours).decode())[("store_api_probe_total", (("worker", "w"),))] == 3


def test_a_scrape_beside_an_unsized_file_is_whole_over_http(database_url, tmp_path):
    """The file a worker killed between creating and sizing it leaves: scrapes stay 200 and whole."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    server = Gunicorn(database_url, WEB_CONCURRENCY=1, PROMETHEUS_MULTIPROC_DIR=str(directory))
    try:
        first = requests.get(f"{server.base}/metrics", timeout=5)
        assert first.status_code == 200
        assert any(name.endswith(".db") for name in os.listdir(directory))  # the worker's files are there
        (directory / "counter_4194303.db").write_bytes(b"")
        then = requests.get(f"{server.base}/metrics", timeout=5)
        assert then.status_code == 200, then.text[:500]
        before, after = _samples(first.text), _samples(then.text)
        pool_max = ("store_api_pool_connections", (("pool", "primary"), ("state", "max")))
        assert before[pool_max] == after[pool_max] == 4  # DB_POOL_MAX_CONNECTIONS
        assert before.keys() <= after.keys()
    finally:
        server.stop()
