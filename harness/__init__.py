"""Real processes for the tests and the benchmark: gunicorn (`harness.gunicorn`), PgBouncer, a TCP
fault proxy, and polling helpers. Not part of the service; nothing here imports from tests/."""
