"""A real Prometheus (Debian's `prometheus` package) on loopback, for tests: scraping given targets
every second, evaluating given rule files every second, its HTTP API read back."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from harness.waiting import wait_listening, wait_until
from swagger_server.db.embedded import free_port

BINARY = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: list[Path],
        job: str = "store-api",
        external_labels: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "900ms",
                "external_labels": external_labels or {},
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_listening(self.process, self.port, "prometheus", timeout=30)
        wait_until(lambda: self._get("/-/ready", raw=True), timeout=30, message="prometheus ready")

    def _get(self, path: str, raw: bool = False):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                body = response.read()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now; AssertionError when Prometheus refuses it."""
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer is not None and answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def firing(self) -> dict[str, list[dict]]:
        """Alerts in state firing, by name."""
        alerts: dict[str, list[dict]] = {}
        for alert in self._get("/api/v1/alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert)
        return alerts

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
