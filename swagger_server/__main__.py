"""The command line: `python -m swagger_server db upgrade | db seed | keys create | serve | check-config`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import psycopg2

from swagger_server.config import (
    EMBEDDED_URL_FILE,
    ConfigError,
    describe,
    embedded_url,
    load_settings,
    log_notes,
    names_a_server,
)
from swagger_server.identity import cli as identity_cli
from swagger_server.text import first_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swagger_server", description="Store API administration")
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="database schema and demo data").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="apply the pending schema files without stalling traffic (idempotent)")
    db.add_parser("status", help="list the schema files: applied, pending, or unknown to this code")
    db.add_parser("rollup", help="bring the dashboard's rollups up to date now, in batches, while the service serves")
    seed = db.add_parser("seed", help="generate deterministic demo data in the database")
    seed.add_argument("--customers", type=int, default=10_000)
    seed.add_argument("--products", type=int, help="default: a tenth of --customers (at least 10)")
    seed.add_argument("--orders", type=int, help="default: ten per customer")
    seed.add_argument("--days", type=int, default=365, help="the days before today the orders span (default 365)")
    seed.add_argument("--reset", action="store_true", help="replace existing data")
    seed.add_argument("--if-empty", action="store_true", help="do nothing if the store already has data")
    seed.add_argument("--quiet", action="store_true", help="no progress bar")
    serve = sub.add_parser("serve", help="development server (use gunicorn in production)")
    serve.add_argument("--port", type=int)
    sub.add_parser("check-config", help="validate config.ini and the environment, print the settings")
    identity_cli.add_parser(sub)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    embedded = embedded_url(env)
    if embedded:
        env["DATABASE_URL"] = embedded  # `make run`'s embedded server, while it runs
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    serving = args.command in ("serve", "check-config")
    log_notes(settings, env, say=lambda note: print(f"note: {note}", file=sys.stderr), serving=serving)
    dsn = settings.database.dsn("store-api:cli")
    try:
        if args.command == "check-config":
            print("\n".join(describe(settings)))
            if embedded:
                print(f"# (the embedded server `make run` started, from {EMBEDDED_URL_FILE})")
            return 0
        if args.command == "serve":
            import uvicorn

            from swagger_server import create_app
            from swagger_server.app import SpecError

            try:
                app = create_app(settings)
            except SpecError as exc:
                print(f"spec error: {exc}", file=sys.stderr)  # one line, as gunicorn says it
                return 2
            # access_log=False: the app writes one line per request itself (uvicorn's would be a second).
            uvicorn.run(app, host="127.0.0.1", port=args.port or settings.server.port, access_log=False)
            return 0
        if args.command == "keys":
            return identity_cli.run(args, dsn)
        if args.action == "upgrade":
            from swagger_server.db.migrate import MigrationError, Timeouts, upgrade

            mig = settings.migrate
            timeouts = Timeouts(mig.lock_timeout, mig.statement_timeout, mig.deadline)
            try:
                applied = upgrade(dsn, timeouts, say=lambda line: print(line, flush=True))
            except MigrationError as exc:
                print(f"db upgrade: {exc}", file=sys.stderr)
                return 1
            print(f"schema up to date ({len(applied)} file(s) applied)")
            return 0
        if args.action == "rollup":
            from swagger_server.db.rollups import catch_up

            conn = psycopg2.connect(dsn)
            try:
                total = catch_up(conn, say=lambda line: print(line, flush=True))
            finally:
                conn.close()
            print(f"rollups up to date ({total} order(s) rolled up)")
            return 0
        if args.action == "status":
            from swagger_server.db.migrate import status

            rows = status(dsn)
            width = max(len(name) for name, _ in rows)
            print("\n".join(f"{name:<{width}}  {state}" for name, state in rows))
            pending = sum(state == "pending" for _, state in rows)
            print(f"{pending} pending" + (": run `python -m swagger_server db upgrade`" if pending else ""))
            return 0
        from swagger_server.db.seed import is_seeded
        from swagger_server.db.seed import seed as run_seed

        if args.if_empty and is_seeded(dsn):
            print("store already has data; not seeding")
            return 0
        # The sizes scale together: `--customers 100` is a small store, not 100 customers with 100 000 orders.
        products = args.products if args.products is not None else max(10, args.customers // 10)
        orders = args.orders if args.orders is not None else args.customers * 10
        counts = run_seed(dsn, args.customers, products, orders, reset=args.reset, quiet=args.quiet, days=args.days)
        print("seeded " + ", ".join(f"{n} {table}" for table, n in counts.items()))
        return 0
    except psycopg2.OperationalError as exc:
        named = "the embedded server of `make run`" if embedded else (names_a_server(env) or "the defaults")
        print(
            f"cannot reach the database at {settings.database.safe_dsn()} (named by {named}): {first_line(exc)}",
            file=sys.stderr,
        )
        return 1
    except psycopg2.Error as exc:  # the database refused what the role may not do: one line, not a traceback
        what = f"db {args.action}" if args.command == "db" else args.command
        print(
            f"{what}: {first_line(exc)} (as {settings.database.safe_dsn()}): connect as a role that may, the"
            " database's owner for `db upgrade` (docs/UPGRADING.md)",
            file=sys.stderr,
        )
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
