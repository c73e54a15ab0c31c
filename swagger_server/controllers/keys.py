"""API keys (the `admin` scope): issue one (its secret shown once), list them, revoke one. The same
as `python -m swagger_server keys` (identity/cli.py), over HTTP."""

from __future__ import annotations

from swagger_server.controllers.conditional import evaluate
from swagger_server.controllers.reply import no_content, page, reply
from swagger_server.db.connection import transaction
from swagger_server.db.queries import customers
from swagger_server.db.queries import keys as queries
from swagger_server.errors import NotFound
from swagger_server.identity.keys import new_key
from swagger_server.request_scope import get_conn, read_only

# Credentials: no cache keeps them, and a key's answer (its secret) is shown once.
_NO_STORE = {"Cache-Control": "no-store"}


@read_only
def list_keys(limit: int = 20, after: str | None = None):
    # No version to name (a key's last use moves without one): the conditions hold against none.
    early = evaluate(None)
    if early is not None:
        return early
    return reply(page(queries.list_keys(get_conn(), limit + 1, after), limit), 200, _NO_STORE)


def create_key(body: dict):
    evaluate(None, exists=False)  # /api/keys/{id} has no GET: If-Match is 412, If-None-Match holds
    key_id, token, digest = new_key()
    customer_id = body.get("customer_id")
    conn = get_conn()
    with transaction(conn):
        if customer_id is not None and not customers.lock_customer(conn, customer_id):
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        row = queries.create_key(
            conn,
            key_id,
            digest,
            sorted(set(body["scopes"])),
            customer_id,
            body.get("name", ""),
            body.get("expires_in_days"),
        )
    return reply({**row, "key": token}, 201, {"Location": f"/api/keys/{key_id}", **_NO_STORE})


def revoke_key(key_id: str):
    evaluate(None)
    conn = get_conn()
    with transaction(conn):
        row = queries.revoke_key(conn, key_id)
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return no_content()
