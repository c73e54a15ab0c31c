"""What Settings must satisfy: ranges, relations between settings, and the token grammar. Errors
name the setting by its environment variable and ini key (settings.label), never by hand."""

from __future__ import annotations

import ipaddress

from swagger_server.config.settings import ConfigError, Settings, label

TOKEN_SCOPES = ("read", "write", "admin")


def _network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def parse_token(entry: str) -> tuple[str, str, str]:
    """`[read:|write:|admin:][sha256:]<secret or hex digest>` -> (scope, "sha256" or "plain", value).

    A token without a scope may write (and read); an admin token may also issue and revoke API keys. `sha256:` followed by 64 hex digits is the token's
    SHA-256 digest, so that a config file need not hold the token itself.
    """
    scope, rest = "write", entry
    head, sep, tail = entry.partition(":")
    if sep and head in TOKEN_SCOPES:
        scope, rest = head, tail
    if rest.startswith("sha256:"):
        return scope, "sha256", rest[len("sha256:") :].lower()
    return scope, "plain", rest


def token_problem(entry: str) -> str | None:
    """Why a token entry is malformed (without echoing it), or None."""
    _, kind, value = parse_token(entry)
    if kind == "sha256":
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            return "a sha256: entry must be followed by 64 hex digits"
        return None
    if len(value) < 8:
        return "each token must be at least 8 characters long"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "tokens may not contain spaces or control characters"
    return None


def _rate(text: str) -> bool:
    """Empty (no limit), or a rate the limits library reads (600/minute, 10 per second)."""
    if not text:
        return True
    import limits  # only when a limit is set

    try:
        limits.parse(text)
    except ValueError:
        return False
    return True


def validate(settings: Settings) -> None:
    """Check ranges and relations between settings; raise ConfigError naming the offending key."""
    db, pool, api, server = settings.database, settings.pool, settings.api, settings.server
    replica, mig = settings.replica, settings.migrate
    checks = [
        (pool.mode in ("pool", "none"), label("POOL", "mode"), f"must be 'pool' or 'none', got {pool.mode!r}"),
        (pool.min_connections >= 0, label("POOL", "min_connections"), "must be >= 0"),
        (pool.max_connections >= 1, label("POOL", "max_connections"), "must be >= 1"),
        (
            pool.min_connections <= pool.max_connections,
            label("POOL", "min_connections"),
            f"({pool.min_connections}) must not exceed max_connections ({pool.max_connections})",
        ),
        (pool.timeout > 0, label("POOL", "timeout"), "must be > 0 seconds"),
        (pool.max_waiting >= 0, label("POOL", "max_waiting"), "must be >= 0"),
        (pool.statement_timeout_ms >= 0, label("POOL", "statement_timeout_ms"), "must be >= 0"),
        (pool.max_lifetime > 0, label("POOL", "max_lifetime"), "must be > 0 seconds"),
        (pool.max_idle > 0, label("POOL", "max_idle"), "must be > 0 seconds"),
        (pool.check_idle_after >= 0, label("POOL", "check_idle_after"), "must be >= 0 seconds"),
        (pool.ping_timeout > 0, label("POOL", "ping_timeout"), "must be > 0 seconds"),
        (pool.leak_threshold >= 0, label("POOL", "leak_threshold"), "must be >= 0 seconds"),
        (
            0 < pool.reconnect_initial_delay <= pool.reconnect_max_delay,
            label("POOL", "reconnect_initial_delay"),
            "must be > 0 and <= reconnect_max_delay",
        ),
        (
            pool.pgbouncer_max_client_conn >= 0,
            label("POOL", "pgbouncer_max_client_conn"),
            "must be >= 0",
        ),
        (
            pool.budget_check in ("error", "warn", "off"),
            label("POOL", "budget_check"),
            f"must be error, warn or off, got {pool.budget_check!r}",
        ),
        (db.connect_timeout > 0, label("POSTGRES", "connect_timeout"), "must be > 0 seconds"),
        (1 <= db.port <= 65535, label("POSTGRES", "port"), f"must be a TCP port, got {db.port}"),
        (
            not db.url or db.url.startswith(("postgres://", "postgresql://")),
            label("POSTGRES", "url"),
            "must start with postgresql://",
        ),
        (bool(db.url) or bool(db.dbname), label("POSTGRES", "dbname"), "must not be empty"),
        (
            "*" not in api.cors_origins,
            label("API", "cors_origins"),
            "'*' is not allowed: list the origins that may call the API",
        ),
        (
            all(o.startswith(("http://", "https://")) for o in api.cors_origins),
            label("API", "cors_origins"),
            "each origin must start with http:// or https://",
        ),
        (
            not replica.url or replica.url.startswith(("postgres://", "postgresql://")),
            label("REPLICA", "url"),
            "must start with postgresql://",
        ),
        (replica.max_lag > 0, label("REPLICA", "max_lag"), "must be > 0 seconds"),
        (replica.check_interval > 0, label("REPLICA", "check_interval"), "must be > 0 seconds"),
        (replica.min_connections >= 0, label("REPLICA", "min_connections"), "must be >= 0"),
        (replica.max_connections >= 0, label("REPLICA", "max_connections"), "must be >= 0 (0 = as [POOL])"),
        (
            all(_network(n) for n in api.trace_trusted_peers),
            label("API", "trace_trusted_peers"),
            "each entry must be a network like 10.0.0.0/8 or an address",
        ),
        (
            api.log_format in ("json", "text"),
            label("API", "log_format"),
            f"must be json or text, got {api.log_format!r}",
        ),
        (api.retry_after >= 1, label("API", "retry_after"), "must be >= 1 second"),
        (
            0 < api.admission_timeout <= 3600,
            label("API", "admission_timeout"),
            "must be > 0 and <= 3600 seconds",
        ),
        (0 < api.caller_share <= 1, label("API", "caller_share"), "must be > 0 and <= 1 (a share of the threads)"),
        (0.1 <= api.key_refresh <= 60, label("API", "key_refresh"), "must be between 0.1 and 60 (seconds)"),
        (
            not api.oidc_issuer or bool(api.oidc_audience),
            label("API", "oidc_audience"),
            "must be set with oidc_issuer (the audience this API's tokens name)",
        ),
        (
            not api.oidc_issuer or api.oidc_issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")),
            label("API", "oidc_issuer"),
            "must be an https:// URL (plain http only on loopback, for tests)",
        ),
        (api.dashboard_timeout_ms > 0, label("API", "dashboard_timeout_ms"), "must be > 0"),
        (0 <= api.dashboard_max_age <= 60, label("API", "dashboard_max_age"), "must be >= 0 and <= 60 seconds"),
        (
            api.dashboard_rollup_interval == 0 or 0.1 <= api.dashboard_rollup_interval <= 3600,
            label("API", "dashboard_rollup_interval"),
            "must be 0 (off) or between 0.1 and 3600 seconds",
        ),
        (_rate(api.rate_limit), label("API", "rate_limit"), f"expected a rate like 600/minute, got {api.rate_limit!r}"),
        (
            api.rate_limit_storage.startswith(("memory://", "redis://", "rediss://", "redis+unix://")),
            label("API", "rate_limit_storage"),
            "expected memory:// or redis://host:port/db",
        ),
        (
            all(token_problem(t) is None for t in api.tokens),
            label("API", "tokens"),
            next((token_problem(t) for t in api.tokens if token_problem(t)), ""),
        ),
        (api.max_body_bytes >= 1024, label("API", "max_body_bytes"), "must be >= 1024"),
        (api.max_url_bytes >= 256, label("API", "max_url_bytes"), "must be >= 256"),
        (api.max_header_bytes >= 1024, label("API", "max_header_bytes"), "must be >= 1024"),
        (api.max_headers >= 10, label("API", "max_headers"), "must be >= 10"),
        (0 < api.head_timeout <= 3600, label("API", "head_timeout"), "must be > 0 and <= 3600 seconds"),
        (0 < api.body_timeout <= 3600, label("API", "body_timeout"), "must be > 0 and <= 3600 seconds"),
        (api.idempotency_ttl > 0, label("API", "idempotency_ttl"), "must be > 0 seconds"),
        (1 <= server.port <= 65535, label("GUNICORN", "port"), f"must be a TCP port, got {server.port}"),
        (
            api.metrics_port == 0 or (1 <= api.metrics_port <= 65535 and api.metrics_port != server.port),
            label("API", "metrics_port"),
            "must be 0 (off) or a TCP port other than the API's",
        ),
        (server.workers >= 1, label("GUNICORN", "workers"), "must be >= 1"),
        (server.threads >= 1, label("GUNICORN", "threads"), "must be >= 1"),
        (0 < mig.lock_timeout <= 60, label("MIGRATE", "lock_timeout"), "must be > 0 and <= 60 seconds"),
        (mig.statement_timeout > 0, label("MIGRATE", "statement_timeout"), "must be > 0 seconds"),
        (mig.deadline >= 0, label("MIGRATE", "deadline"), "must be >= 0 seconds"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message} (from {settings.source} and the environment)")
