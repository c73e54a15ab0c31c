"""Access tokens from a real OpenID provider (oidc-provider, npm: tools/oidc-provider.mjs) by the client
credentials grant: verified against its published keys (swagger_server/identity/oidc.py), its keys
rotated mid-test, made-up kids in a flood, the provider gone and hanging, tokens forged every way a
JWT is forged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm

from harness import oidc as harness
from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.identity import oidc
from swagger_server.state import of_flask
from tests.support.database import make_settings, query
from tests.support.timing import within

pytestmark = pytest.mark.skipif(
    harness.NODE is None or not harness.INSTALLED, reason="node and tools/node_modules (make tools) are needed"
)

AUDIENCE = "https://store-api.test"
READER = {"client_id": "reader", "client_secret": "reader-secret-" + "r" * 32, "scope": "read"}
WRITER = {"client_id": "writer", "client_secret": "writer-secret-" + "w" * 32, "scope": "read write"}
BOUND = {"client_id": "bound", "client_secret": "bound-secret-" + "b" * 32, "scope": "read write", "customer_id": 2}


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    started = harness.Provider(tmp_path_factory.mktemp("oidc"), [READER, WRITER, BOUND], AUDIENCE).start()
    yield started
    started.stop()


@pytest.fixture
def client(database_url, provider, monkeypatch):
    monkeypatch.setattr(oidc, "MIN_REFETCH", 0.5)  # rotations below need not wait the default's 10 s
    if provider.process.poll() is not None:
        provider.start()  # a test before killed it
    settings = make_settings(
        database_url, api={"oidc_issuer": provider.issuer, "oidc_audience": AUDIENCE, "rate_limit": "5/minute"}
    )
    app = create_app(settings)
    with app.test_client() as client:
        client.oidc = of_flask(app.app).oidc
        wait_until(lambda: client.oidc.fetches >= 1 and client.oidc._keys, timeout=10, message="the provider's keys")
        yield client
    get_database(app).close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def forged(provider, claims: dict | None = None, header: dict | None = None, key: dict | None = None) -> str:
    """A token signed with the provider's own current key (or `key`), with `claims` changed."""
    key = key or provider.keys[0]
    now = int(time.time())
    body = {
        "iss": provider.issuer,
        "aud": AUDIENCE,
        "sub": "writer",
        "scope": "read write",
        "iat": now,
        "exp": now + 60,
    }
    body.update(claims or {})
    private = ECAlgorithm.from_jwk(json.dumps(key))
    return jwt.encode(body, private, algorithm="ES256", headers={"kid": key["kid"], **(header or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_real_tokens_by_their_scopes(client, store, provider):
    reader, writer = provider.token(READER), provider.token(WRITER)
    assert client.get("/api/customers", headers=bearer(reader)).status_code == 200
    refused = client.post("/api/customers", headers=bearer(reader), json={"name": "N", "email": "n@example.com"})
    assert refused.status_code == 403, refused.text
    made = client.post("/api/customers", headers=bearer(writer), json={"name": "N", "email": "n@example.com"})
    assert made.status_code == 201, made.text


def test_forged_tokens_are_401(client, store, provider):
    good = forged(provider)
    assert client.get("/api/customers", headers=bearer(good)).status_code == 200  # the forger's baseline works
    public = ECAlgorithm.from_jwk(json.dumps({k: v for k, v in provider.keys[0].items() if k != "d"}))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = {"alg": "HS256", "typ": "JWT", "kid": provider.keys[0]["kid"]}
    claims = jwt.decode(good, options={"verify_signature": False})
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    confused = f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    unsigned = (
        f"{b64(json.dumps({'alg': 'none', 'kid': provider.keys[0]['kid']}).encode())}.{signing_input.split('.')[1]}."
    )
    now = int(time.time())
    cases = {
        "HS256 with the public key (algorithm confusion)": confused,
        "alg none": unsigned,
        "another audience": forged(provider, {"aud": "https://another-api.test"}),
        "another issuer": forged(provider, {"iss": "https://evil.test"}),
        "expired past the leeway": forged(provider, {"exp": now - oidc.LEEWAY - 5}),
        "not yet valid past the leeway": forged(provider, {"nbf": now + oidc.LEEWAY + 30}),
        "no subject": forged(provider, {"sub": None}),
        "signed by a key the provider never published": forged(provider, key=harness.signing_key()),
        "a signature from another token": good.rsplit(".", 1)[0] + "." + forged(provider).rsplit(".", 1)[1][::-1],
        "a customer claim that is no id": forged(provider, {"store_customer_id": "2 OR 1=1"}),
    }
    for what, token in cases.items():
        answer = client.get("/api/customers", headers=bearer(token))
        assert answer.status_code == 401, (what, answer.text)
        assert token not in answer.text
    # Within the leeway, the clocks may differ a little.
    assert client.get("/api/customers", headers=bearer(forged(provider, {"exp": now - 5}))).status_code == 200


def test_keys_rotate_and_retire(client, store, provider):
    old = provider.token(READER)
    provider.rotate(keep_old=True)  # a new signing key, the old one still published
    new = provider.token(READER)
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    time.sleep(oidc.MIN_REFETCH)  # pacing: past the refetch interval the test set, not a poll
    assert client.get("/api/customers", headers=bearer(new)).status_code == 200  # an unknown kid: one fetch
    assert client.get("/api/customers", headers=bearer(old)).status_code == 200
    provider.rotate(keep_old=False)  # the old keys retired
    newest = provider.token(READER)
    time.sleep(oidc.MIN_REFETCH)  # pacing, as above
    assert client.get("/api/customers", headers=bearer(newest)).status_code == 200
    assert client.get("/api/customers", headers=bearer(old)).status_code == 401  # its key is gone


def test_a_flood_of_made_up_kids_is_one_fetch(client, store, provider):
    time.sleep(oidc.MIN_REFETCH)  # pacing: the next unknown kid may fetch
    before = client.oidc.fetches
    started = time.monotonic()
    statuses = set()
    for _ in range(200):
        made_up = forged(provider, header={"kid": secrets.token_hex(8)})
        statuses.add(client.get("/api/customers", headers=bearer(made_up)).status_code)
    elapsed = time.monotonic() - started
    assert statuses == {401}
    # One fetch, and one more per MIN_REFETCH the flood lasted.
    assert 1 <= client.oidc.fetches - before <= 1 + int(elapsed / oidc.MIN_REFETCH), (client.oidc.fetches, elapsed)


class Silent:
    """A listener on the provider's port that accepts and never answers (a hung provider)."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone leaves it listening)
        self.sock.close()
        self._thread.join(5)
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("how", ["gone", "hanging"])
def test_the_provider_unreachable_keeps_the_cached_keys_and_refuses_unknown_kids_in_bounded_time(
    client, store, provider, how
):
    known = provider.token(WRITER)
    assert client.get("/api/customers", headers=bearer(known)).status_code == 200
    provider.kill()
    silent = Silent(provider.port) if how == "hanging" else None
    try:
        time.sleep(oidc.MIN_REFETCH)  # pacing: the unknown kid below may fetch
        assert client.get("/api/customers", headers=bearer(known)).status_code == 200
        fetches, started = client.oidc.fetches, time.monotonic()
        unknown = client.get("/api/customers", headers=bearer(forged(provider, header={"kid": "never-published"})))
        took = time.monotonic() - started
        assert unknown.status_code == 401, unknown.text
        # A hung provider costs the fetch's timeout (+10 %, and the request's own few ms), never more.
        assert took <= within(oidc.FETCH_TIMEOUT), took
        assert client.oidc.fetches == fetches + 1  # it did try the provider
        if how == "hanging":
            assert took >= oidc.FETCH_TIMEOUT * 0.9, took  # and waited for it, as long as allowed
        assert client.get("/api/customers", headers=bearer(known)).status_code == 200
    finally:
        if silent is not None:
            silent.close()
        provider.start()


def test_a_bound_token_sees_its_customer_only(client, store, provider):
    token = provider.token(BOUND)
    assert [c["id"] for c in client.get("/api/customers", headers=bearer(token)).json()["items"]] == [2]
    assert client.get("/api/customers/1", headers=bearer(token)).status_code == 404
    assert client.get("/api/dashboard", headers=bearer(token)).status_code == 403


def test_a_refreshed_token_is_the_same_caller(client, store, provider):
    """Idempotency keys and the rate limit follow the caller (`oidc:<sub>`), not the token's bytes: a
    client that fetched a new token finds its retried order, and has not got a new quota."""
    first, second = provider.token(WRITER), provider.token(WRITER)
    assert first != second
    body = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    placed = client.post("/api/orders", json=body, headers={**bearer(first), "Idempotency-Key": "retry-1"})
    retried = client.post("/api/orders", json=body, headers={**bearer(second), "Idempotency-Key": "retry-1"})
    assert (placed.status_code, retried.status_code) == (201, 200), retried.text
    assert retried.json()["id"] == placed.json()["id"]
    assert query(store, "SELECT count(*) FROM orders") == [(3,)]
    left = [client.get("/api/customers", headers=bearer(t)).headers["RateLimit"] for t in (first, second)]
    assert [int(value.split("r=")[1].split(";")[0]) for value in left] == [2, 1], left


def test_a_token_verified_before_still_expires(client, store, provider):
    """The cache of verified tokens answers only while the token is valid: one whose `exp` passes
    (with the leeway) is refused as an uncached one is."""
    now = int(time.time())
    token = forged(provider, {"exp": now - oidc.LEEWAY + 2})
    assert client.get("/api/customers", headers=bearer(token)).status_code == 200  # verified, cached
    assert client.get("/api/customers", headers=bearer(token)).status_code == 200  # from the cache
    time.sleep(3)  # time passing: past exp + leeway
    assert client.get("/api/customers", headers=bearer(token)).status_code == 401
