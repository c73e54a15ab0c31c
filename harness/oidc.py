"""A real OpenID provider on loopback for the identity tests: panva's oidc-provider (tools/, npm),
run by Node with tools/oidc-provider.mjs, issuing JWT access tokens by the client credentials grant.
Its signing keys are made here (EC P-256, ES256) and rotate by a restart on the same port, as a
provider's keys rotate; stopped (or killed) by its pid."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from harness.processes import OwnProcess
from harness.waiting import wait_listening
from swagger_server.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "oidc-provider.mjs"
NODE = shutil.which("node")
INSTALLED = (ROOT / "tools" / "node_modules" / "oidc-provider").is_dir()


def signing_key() -> dict:
    """A new private EC P-256 JWK with a fresh kid, for ES256."""
    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())))
    return {**jwk, "kid": secrets.token_hex(8), "alg": "ES256", "use": "sig"}


class Provider(OwnProcess):
    def __init__(self, workdir: Path, clients: list[dict], audience: str, ttl: int = 300, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clients, self.audience, self.ttl = clients, audience, ttl
        self.port = port or free_port()
        self.keys = [signing_key()]
        self.process: subprocess.Popen | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Provider:
        keys_file = self.dir / "jwks.json"
        keys_file.write_text(json.dumps({"keys": self.keys}))
        env = {
            "PATH": "/usr/bin:/bin",
            "PORT": str(self.port),
            "KEYS_FILE": str(keys_file),
            "CLIENTS": json.dumps(self.clients),
            "AUDIENCE": self.audience,
            "TTL": str(self.ttl),
            "NODE_ENV": "production",
        }
        self.process = subprocess.Popen(
            [NODE, str(SCRIPT)], cwd=ROOT / "tools", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_listening(self.process, self.port, "oidc-provider")
        if self.process.poll() is not None:  # another listener answered on its port
            raise RuntimeError(f"oidc-provider exited: {self.process.stderr.read().decode()[-2000:]}")
        return self

    def rotate(self, keep_old: bool = True) -> None:
        """Restart with a new signing key first; the old ones still published (keep_old) or retired."""
        self.stop()
        self.keys = [signing_key(), *(self.keys if keep_old else [])]
        self.start()

    def token(self, client: dict, scope: str | None = None) -> str:
        """An access token for `client` by the client credentials grant."""
        answer = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
                "scope": scope or client["scope"],
                "resource": self.audience,
            },
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()["access_token"]
