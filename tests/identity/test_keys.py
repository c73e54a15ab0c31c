"""API keys the service issues (swagger_server/identity/keys.py): issued and revoked from the command
line, checked in memory, refused on every worker of every host within `[API] key_refresh` plus one
pass of revoking, last use written by the pass and never by a request."""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.db.connection import connect
from swagger_server.identity.keys import ApiKeys, new_key
from tests.support.database import admin_connect, make_settings, query, schema_database
from tests.support.servers import EMPTY, Gunicorn

ROOT = Path(__file__).resolve().parent.parent.parent
REFRESH = 1.0  # [API] key_refresh of the servers here
# A revoked key is refused everywhere within the refresh interval and one pass (a few ms here); the
# margin is for a loaded CI machine's scheduling, and for the poll below (every 50 ms).
BOUND = REFRESH + 1.0


@pytest.fixture(scope="module")
def keys_url(pg_server):
    return schema_database(pg_server, "store_keys")


@pytest.fixture
def admin(keys_url):
    conn = admin_connect(keys_url)
    query(conn, "TRUNCATE api_keys")
    yield conn
    conn.close()


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "APP_CONFIG": EMPTY}
    return subprocess.run(
        [sys.executable, "-m", "swagger_server", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def issue(url: str, *args: str) -> str:
    done = cli(url, "create", *args)
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[0]
    assert token.startswith("sk_") and len(token) == 3 + 12 + 1 + 43, done.stdout
    return token


def statuses(hosts, token: str, per_host: int = 6) -> set[int]:
    """The answers to `per_host` requests on new connections to each host (so that both workers of
    each are asked, whichever takes the connection)."""
    found = set()
    for base in (h.base for h in hosts):
        for _ in range(per_host):
            with httpx.Client(base_url=base, timeout=5) as client:
                found.add(client.get("/api/customers", headers={"Authorization": f"Bearer {token}"}).status_code)
    return found


@pytest.fixture(scope="module")
def fleet(keys_url):
    hosts = [Gunicorn(keys_url, API_KEY_REFRESH=REFRESH) for _ in range(2)]
    yield hosts
    for host in hosts:
        host.stop()


def test_a_key_is_served_by_every_host_and_refused_by_each_within_the_bound_once_revoked(keys_url, admin, fleet):
    token = issue(keys_url, "--scope", "read", "--name", "fleet test")
    key_id = token[3:15]
    wait_until(lambda: statuses(fleet, token) == {200}, timeout=BOUND + 5, message="the new key to be served")
    listed = cli(keys_url, "list")
    assert key_id in listed.stdout and token[16:] not in listed.stdout and "fleet test" in listed.stdout
    done = cli(keys_url, "revoke", key_id)
    revoked = time.monotonic()
    assert done.returncode == 0 and f"key {key_id} revoked" in done.stdout, done.stdout + done.stderr
    seen = []

    def refused_everywhere() -> bool:
        answers = statuses(fleet, token, per_host=4)
        seen.append((round(time.monotonic() - revoked, 2), sorted(answers)))
        return answers == {401}

    wait_until(refused_everywhere, timeout=BOUND + 3, interval=0.05, message="the revoked key to be refused")
    took = time.monotonic() - revoked
    assert took <= BOUND, seen
    # And it stays refused (no worker that read it late brings it back).
    assert statuses(fleet, token) == {401}
    # The access log names the caller by the key's id, and never holds the key.
    logged = [json.loads(x) for host in fleet for x in host.stdout().splitlines() if x.startswith("{")]
    served = [e for e in logged if e["status"] == 200 and e["path"] == "/api/customers"]
    assert served and {e["caller"] for e in served} == {"key:" + key_id}
    assert token[16:] not in json.dumps(logged)
    assert cli(keys_url, "revoke", "nosuchkey234").returncode == 1


@pytest.fixture
def client(keys_url):
    app = create_app(make_settings(keys_url, api={"key_refresh": 0.2}))
    with app.test_client() as client:  # the lifespan: the key refresher starts
        yield client
    get_database(app).close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_keys_scopes_and_secret_decide(keys_url, admin, client):
    reader, writer = issue(keys_url, "--scope", "read"), issue(keys_url, "--scope", "write")
    wait_until(lambda: client.get("/api/customers", headers=bearer(writer)).status_code == 200, timeout=5)
    assert client.get("/api/customers", headers=bearer(reader)).status_code == 200
    refused = client.post("/api/customers", headers=bearer(reader), json={"name": "A", "email": "a@example.com"})
    assert refused.status_code == 403 and "write access is needed" in refused.json()["detail"]
    made = client.post("/api/customers", headers=bearer(writer), json={"name": "A", "email": "a@example.com"})
    assert made.status_code == 201, made.text
    # A wrong secret, an unknown id, a key cut short, a key with a character more: 401, all alike.
    wrong = writer[:-1] + ("A" if writer[-1] != "A" else "B")
    unknown = "sk_" + "a" * 12 + writer[15:]
    for token in (wrong, unknown, writer[:-1], writer + "A", "sk_", "sk_" + "a" * 12):
        answer = client.get("/api/customers", headers=bearer(token))
        assert answer.status_code == 401, (token, answer.text)
        assert token not in answer.text


def test_an_expired_key_is_refused(keys_url, admin, client):
    token = issue(keys_url, "--scope", "read", "--expires-in-days", "1")
    wait_until(lambda: client.get("/api/customers", headers=bearer(token)).status_code == 200, timeout=5)
    query(admin, "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", (token[3:15],))
    # Expiry needs no pass: the check compares the time itself, so it must be read once more first.
    wait_until(lambda: client.get("/api/customers", headers=bearer(token)).status_code == 401, timeout=5)
    assert cli(keys_url, "create", "--scope", "read", "--expires-in-days", "0").returncode == 1


def test_a_key_before_the_keys_are_read_is_503_not_401(keys_url, admin):
    token = issue(keys_url, "--scope", "read")
    app = create_app(make_settings(keys_url))
    client = app.test_client()  # no lifespan: no pass has run
    try:
        answer = client.get("/api/customers", headers=bearer(token))
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
        assert answer.json()["type"].endswith("/database-unavailable")
        assert client.get("/api/customers", headers=bearer("test-token")).status_code == 200  # configured tokens go on
    finally:
        get_database(app).close()


def key_row(admin, key_id: str) -> tuple:
    """(last use, the row version's xmin: it changes with every write of the row)."""
    return query(admin, "SELECT last_used_at, xmin::text FROM api_keys WHERE id = %s", (key_id,))[0]


def test_last_use_is_written_by_the_pass_not_by_each_request(keys_url, admin):
    token = issue(keys_url, "--scope", "read")
    keys = ApiKeys()
    conn = connect(keys_url, connect_timeout=5, io_timeout=None, statement_timeout_ms=0)
    try:
        keys.refresh(conn)
        key_id = token[3:15]
        last_use, version = key_row(admin, key_id)
        for _ in range(50):
            assert keys.check(token) is not None
        assert key_row(admin, key_id) == (None, version)
        keys.refresh(conn)
        # The observer sees a write when there is one: the pass wrote this key's last use.
        last_use, written = key_row(admin, key_id)
        assert last_use is not None and written != version
        keys.refresh(conn)  # nothing used since: nothing written
        assert key_row(admin, key_id) == (last_use, written)
    finally:
        conn.close()


def test_a_key_gone_with_its_customer_and_a_late_commit_are_both_seen(keys_url, admin):
    customer = query(admin, "INSERT INTO customers (name, email) VALUES ('K', 'k@example.com') RETURNING id")[0][0]
    bound = issue(keys_url, "--scope", "read", "--customer", str(customer))
    late = issue(keys_url, "--scope", "read")
    keys = ApiKeys()
    conn = connect(keys_url, connect_timeout=5, io_timeout=None, statement_timeout_ms=0)
    other = admin_connect(keys_url)
    try:
        keys.refresh(conn)
        assert keys.check(bound).customer_id == customer and keys.check(late) is not None
        # Deleted with its customer: no row says it changed, the count does.
        query(admin, "DELETE FROM customers WHERE id = %s", (customer,))
        keys.refresh(conn)
        assert keys.check(bound) is None
        # A revocation committed after a later change was read: found by reading a little before.
        query(other, "BEGIN")
        query(
            other, "UPDATE api_keys SET revoked_at = now(), changed_at = clock_timestamp() WHERE id = %s", (late[3:15],)
        )
        issue(keys_url, "--scope", "read")  # a later change, committed first
        keys.refresh(conn)
        assert keys.check(late) is not None  # the revocation is not committed yet
        query(other, "COMMIT")
        keys.refresh(conn)
        assert keys.check(late) is None
    finally:
        conn.close()
        other.close()


def test_ten_thousand_keys_are_checked_as_two_are(keys_url, admin, monkeypatch):
    """One dictionary lookup whatever the number of keys: the work per check is counted here (the
    comparisons made), its time measured in `make bench` (docs/PERFORMANCE.md)."""
    rows = [new_key() for _ in range(10_000)]
    query(
        admin,
        "INSERT INTO api_keys (id, secret_sha256, scopes) SELECT i, d, '{read}' FROM unnest(%s::text[], %s::bytea[]) AS u(i, d)",
        ([r[0] for r in rows], [r[2] for r in rows]),
    )
    keys = ApiKeys()
    conn = connect(keys_url, connect_timeout=5, io_timeout=None, statement_timeout_ms=0)
    try:
        keys.refresh(conn)
    finally:
        conn.close()
    assert len(keys) == 10_000
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert keys.check(rows[1234][1]) is not None and keys.check(rows[9999][1][:-1] + "x") is None
    assert len(calls) == 2  # one comparison a check, not one per key


ADMIN = "admin:admin-secret-for-tests"


@pytest.fixture
def admin_client(keys_url):
    app = create_app(make_settings(keys_url, api={"key_refresh": 0.1, "tokens": ("test-token", ADMIN)}))
    with app.test_client() as client:
        yield client
    get_database(app).close()


def test_admin_operations_issue_list_and_revoke(keys_url, admin, admin_client):
    client, root = admin_client, bearer(ADMIN.split(":", 1)[1])
    assert client.get("/api/keys", headers=bearer("test-token")).status_code == 403  # write is not admin
    customer = query(admin, "INSERT INTO customers (name, email) VALUES ('K', 'k2@example.com') RETURNING id")[0][0]
    issued = client.post("/api/keys", headers=root, json={"scopes": ["write"], "customer_id": customer, "name": "shop"})
    assert issued.status_code == 201, issued.text
    assert (
        issued.headers["Cache-Control"] == "no-store"
        and issued.headers["Location"] == f"/api/keys/{issued.json()['id']}"
    )
    key = issued.json()["key"]
    assert key.startswith(f"sk_{issued.json()['id']}_") and issued.json()["customer_id"] == customer
    wait_until(lambda: client.get(f"/api/customers/{customer}", headers=bearer(key)).status_code == 200, timeout=5)
    listed = client.get("/api/keys", headers=root)
    assert listed.status_code == 200 and listed.headers["Cache-Control"] == "no-store"
    assert [k["id"] for k in listed.json()["items"]] == [issued.json()["id"]] and key[16:] not in listed.text
    assert client.delete(f"/api/keys/{issued.json()['id']}", headers=root).status_code == 204
    assert client.delete(f"/api/keys/{issued.json()['id']}", headers=root).status_code == 204  # again: no change
    wait_until(lambda: client.get(f"/api/customers/{customer}", headers=bearer(key)).status_code == 401, timeout=5)
    assert client.delete("/api/keys/abcdefgh2345", headers=root).status_code == 404
    # /api/keys/{id} has no GET: nothing current for If-Match to match, so a create with one is 412.
    matched = client.post("/api/keys", headers={**root, "If-Match": "*"}, json={"scopes": ["read"]})
    assert matched.status_code == 412 and matched.headers["Content-Type"] == "application/problem+json"
    missing = client.post("/api/keys", headers=root, json={"scopes": ["read"], "customer_id": 999999})
    assert missing.status_code == 404 and missing.json()["field"] == "customer_id"
    # An admin key manages keys and nothing else: its scopes are what it says.
    admin_key = client.post("/api/keys", headers=root, json={"scopes": ["admin"]}).json()["key"]
    wait_until(lambda: client.get("/api/keys", headers=bearer(admin_key)).status_code == 200, timeout=5)
    assert client.get("/api/customers", headers=bearer(admin_key)).status_code == 403
