"""SQL for API keys (schema 019). Every function takes the connection first and never commits."""

from __future__ import annotations

from datetime import datetime

# One pass of a worker's key cache (identity/keys.py): how many keys there are (a key gone with its
# customer shows as a count that no longer matches), then every row changed since `since`.
_CHANGED = (
    "SELECT NULL::text, NULL::bytea, NULL::text[], NULL::bigint, NULL::float8, NULL::boolean, NULL::timestamptz,"
    " count(*) FROM api_keys"
    " UNION ALL"
    " SELECT id, secret_sha256, scopes, customer_id, extract(epoch FROM expires_at)::float8, revoked_at IS NOT NULL,"
    " changed_at, NULL FROM api_keys WHERE changed_at > %s"
)


def changed_keys(conn, since: datetime) -> tuple[int, list[tuple]]:
    """(how many keys exist, the rows changed after `since`: id, digest, scopes, customer, expiry as epoch
    seconds or None, revoked, changed_at)."""
    with conn.cursor() as cur:
        cur.execute(_CHANGED, (since,))
        rows = cur.fetchall()
    return rows[0][7], [row[:7] for row in rows[1:]]


def record_use(conn, ids: list[str], times: list[float]) -> None:
    """Each key's last use (epoch seconds), written only where it moves the recorded one forward by a
    second or more."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys k SET last_used_at = to_timestamp(u.at)"
            " FROM unnest(%s::text[], %s::float8[]) AS u(id, at)"
            " WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(u.at) - interval '1 second')",
            (ids, times),
        )


def create_key(
    conn,
    key_id: str,
    digest: bytes,
    scopes: list[str],
    customer_id: int | None,
    name: str,
    expires_in_days: float | None,
) -> dict:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO api_keys (id, secret_sha256, scopes, customer_id, name, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s * 86400))"
            " RETURNING id, name, scopes, customer_id, created_at, expires_at, revoked_at, last_used_at",
            (key_id, digest, scopes, customer_id, name, expires_in_days),
        )
        return cur.one()


def list_keys(conn, limit: int, after: str | None = None) -> list[dict]:
    """Keys by id (never their digest), `limit` of them after `after`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, name, scopes, customer_id, created_at, expires_at, revoked_at, last_used_at FROM api_keys"
            " WHERE id > %s ORDER BY id LIMIT %s",
            (after or "", limit),
        )
        return cur.all()


def revoke_key(conn, key_id: str) -> dict | None:
    """Revoke the key (again: no change); None if there is no such key."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()),"
            " changed_at = CASE WHEN revoked_at IS NULL THEN clock_timestamp() ELSE changed_at END"
            " WHERE id = %s RETURNING id, name, scopes, customer_id, created_at, expires_at, revoked_at, last_used_at",
            (key_id,),
        )
        return cur.one()
