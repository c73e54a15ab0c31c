"""The CPU of checking each kind of credential, in process (no network, no database): a configured
token, an API key among 2 and among 10 000, a provider's JWT signed ES256 and RS256 (the check a
request pays before anything else). `make bench-identity`; figures in docs/PERFORMANCE.md.

Each is checked N times in a loop, CPU time (process_time) divided by N; median of ROUNDS rounds."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swagger_server.identity import oidc  # noqa: E402
from swagger_server.identity.keys import ApiKeys, new_key  # noqa: E402
from swagger_server.security import Tokens  # noqa: E402

N = 20_000
ROUNDS = 5
ISSUER, AUDIENCE = "https://idp.example.test", "https://store-api.test"


def cpu_per_call(call, n: int = N) -> float:
    """Microseconds of CPU per call, the median of ROUNDS rounds."""
    rounds = []
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(n):
            call()
        rounds.append((time.process_time() - start) / n * 1e6)
    return statistics.median(rounds)


def keys_of(count: int) -> tuple[ApiKeys, str]:
    store = ApiKeys()
    rows, token = [], None
    for i in range(count):
        key_id, token_i, digest = new_key()
        rows.append((key_id, digest, ["read"], None, None, False, datetime.now(UTC)))
        if i == count // 2:
            token = token_i
    store._apply(rows, replace=True)
    store.loaded.set()
    return store, token


def jwt_case(alg: str):
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": "k1", "alg": alg, "use": "sig"})
    tokens = oidc.OidcTokens(ISSUER, AUDIENCE, "store_customer_id")
    tokens._keys = {"k1": PyJWK(public_jwk)}
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "client", "scope": "read write", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k1"})
    return tokens, token


def jwt_cpu(alg: str, cached: bool = False) -> float:
    tokens, token = jwt_case(alg)

    async def many(n: int):
        for _ in range(n):
            if not cached:
                tokens._verified.clear()  # every check verifies the signature
            await tokens.claims(token)

    rounds = []
    n = N // 10
    for _ in range(ROUNDS):
        start = time.process_time()
        asyncio.run(many(n))
        rounds.append((time.process_time() - start) / n * 1e6)
    return statistics.median(rounds)


def main() -> int:
    configured = Tokens(["read:read-token-for-bench", "write:write-token-for-bench"])
    two, two_token = keys_of(2)
    many, many_token = keys_of(10_000)
    rows = [
        ("configured token (2 configured)", cpu_per_call(lambda: configured.check("write-token-for-bench", "read"))),
        ("API key (2 keys)", cpu_per_call(lambda: two.check(two_token))),
        ("API key (10 000 keys)", cpu_per_call(lambda: many.check(many_token))),
        ("provider JWT, ES256", jwt_cpu("ES256")),
        ("provider JWT, RS256 (2048-bit)", jwt_cpu("RS256")),
        ("provider JWT, ES256, verified before (the cache)", jwt_cpu("ES256", cached=True)),
    ]
    lines = ["| credential | CPU per check, µs |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in rows]
    text = "\n".join(lines)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "identity.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
