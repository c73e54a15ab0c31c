"""`python -m swagger_server keys create | list | revoke`: API keys from the command line."""

from __future__ import annotations

import argparse

import psycopg2.errors

from swagger_server.db.connection import connect
from swagger_server.db.queries import keys as queries
from swagger_server.identity.keys import SCOPES, new_key
from swagger_server.text import canonical, refusal


def add_parser(sub) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="issue a key; it is printed once, never stored in clear")
    create.add_argument("--scope", action="append", choices=SCOPES, required=True, help="read, write or admin (repeat)")
    create.add_argument(
        "--customer", type=int, help="bind the key to this customer: it reads and changes only its rows"
    )
    create.add_argument("--expires-in-days", type=float, help="default: never")
    create.add_argument("--name", default="", help="what the key is for (up to 100 characters)")
    listing = keys.add_parser("list", help="every key, without its secret")
    listing.add_argument("--limit", type=int, default=1000)
    revoke = keys.add_parser("revoke", help="refuse the key from now on (every worker within [API] key_refresh)")
    revoke.add_argument("id", help="the key's id: the 12 characters after sk_")


def run(args: argparse.Namespace, dsn: str, say=print) -> int:
    conn = connect(dsn, connect_timeout=10, io_timeout=None, statement_timeout_ms=0)
    try:
        if args.action == "create":
            if args.expires_in_days is not None and args.expires_in_days <= 0:
                raise ValueError("--expires-in-days must be more than 0")
            name = canonical(args.name)
            why = refusal(name) if name else None
            if why or len(name) > 100:
                raise ValueError(f"--name {why or 'must be at most 100 characters'}")
            key_id, token, digest = new_key()
            try:
                row = queries.create_key(
                    conn, key_id, digest, sorted(set(args.scope)), args.customer, name, args.expires_in_days
                )
            except psycopg2.errors.ForeignKeyViolation:
                raise ValueError(f"--customer {args.customer}: no such customer") from None
            conn.commit()
            say(token)
            say(
                f"# key {row['id']} ({', '.join(row['scopes'])}"
                + (f", customer {row['customer_id']}" if row["customer_id"] is not None else "")
                + (f", expires {row['expires_at']:%Y-%m-%d %H:%M:%S %Z}" if row["expires_at"] else "")
                + "): shown once, keep it now"
            )
            return 0
        if args.action == "list":
            rows = queries.list_keys(conn, args.limit)
            conn.rollback()
            say(
                "id            scopes            customer  created              expires              revoked              last used            name"
            )
            for r in rows:
                say(
                    f"{r['id']:<13} {','.join(r['scopes']):<17} {r['customer_id'] or '-':<9} {_at(r['created_at'])} "
                    f"{_at(r['expires_at'])} {_at(r['revoked_at'])} {_at(r['last_used_at'])} {r['name']}"
                )
            return 0
        row = queries.revoke_key(conn, args.id)
        conn.commit()
        if row is None:
            say(f"no key {args.id!r}")
            return 1
        say(f"key {row['id']} revoked at {_at(row['revoked_at'])}")
        return 0
    finally:
        conn.close()


def _at(value) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-" + " " * 18
