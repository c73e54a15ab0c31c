"""The settings, typed and frozen: one dataclass per config.ini section, each field declaring its
default, the environment variable that overrides it and its rule (rules.py). The table the loader
reads (SECTIONS, SECTION_ATTR, ENV_OVERRIDES) is derived from these, never written by hand. Read by
swagger_server.config.loading; checked by swagger_server.config.checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import ClassVar
from urllib.parse import urlsplit

import psycopg2.extensions

from swagger_server.config.rules import (
    Rule,
    anything,
    at_least,
    between,
    each,
    not_empty,
    one_of,
    port,
    postgres_url,
    setting,
    tokens,
)

DEFAULT_CONFIG = "config.ini"


class ConfigError(Exception):
    """A missing or malformed setting. The message is one line naming the key and where it came from."""


def _network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


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


_CORS = Rule(
    lambda origins: "*" not in origins and all(o.startswith(("http://", "https://")) for o in origins),
    lambda origins: (
        "'*' is not allowed: list the origins that may call the API"
        if "*" in origins
        else "each origin must start with http:// or https://"
    ),
    admits="https://shop.example,http://localhost:5173",
    refuses="*",
)
_RATE = Rule(_rate, "expected a rate like 600/minute, got {value!r}", admits="600/minute", refuses="lots")
_ISSUER = Rule(
    lambda v: not v or v.startswith(("https://", "http://127.0.0.1", "http://localhost")),
    "must be an https:// URL (plain http only on loopback, for tests)",
    admits="https://login.example",
    refuses="http://login.example",
)
_STORAGE = Rule(
    lambda v: v.startswith(("memory://", "redis://", "rediss://", "redis+unix://")),
    "expected memory:// or redis://host:port/db",
    admits="redis://127.0.0.1:6379/0",
    refuses="memcached://127.0.0.1",
)
_METRICS_TOKEN = Rule(
    lambda v: not v or (len(v) >= 8 and not any(c.isspace() or not c.isprintable() for c in v)),
    "must be at least 8 characters, without spaces or control characters",
    admits="metrics-secret",
    refuses="short",
)
_NETWORKS = each(
    _network, "each entry must be a network like 10.0.0.0/8 or an address", "10.0.0.0/8,127.0.0.1", "10.0.0.0/33"
)


@dataclass(frozen=True)
class DatabaseSettings:
    SECTION: ClassVar[str] = "POSTGRES"

    host: str = setting("127.0.0.1", rule=not_empty("db.internal"))
    port: int = setting(5432, rule=port())
    user: str = setting("postgres", rule=not_empty("app"))
    password: str = setting("", rule=anything("hunter2"), secret=True)
    dbname: str = setting("store", rule=anything("shop"))  # may be empty only with a url (checks.py)
    sslmode: str = setting("prefer", rule=one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"))
    connect_timeout: float = setting(3.0, rule=at_least(0, " seconds", strict=True))
    # A whole libpq URL (DATABASE_URL or [POSTGRES] url); wins over the keys above. Holds the password.
    url: str = setting("", env="DATABASE_URL", rule=postgres_url(), secret=True)
    # TCP keepalives and tcp_user_timeout: a half-open connection is detected by the kernel, not never.
    keepalives_idle: int = setting(30, rule=at_least(1, " seconds"))
    tcp_user_timeout_ms: int = setting(10000, rule=at_least(0))

    def dsn(self, application_name: str = "store-api") -> str:
        """The libpq connection string, with keepalives, tcp_user_timeout and application_name added."""
        extra = {
            "connect_timeout": max(1, round(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
            "application_name": application_name,
        }
        if self.url:
            return psycopg2.extensions.make_dsn(self.url, **extra)
        return psycopg2.extensions.make_dsn(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=self.dbname,
            sslmode=self.sslmode,
            **extra,
        )

    def safe_dsn(self) -> str:
        """Where we connect, for logs and errors: never the password."""
        if self.url:
            parts = urlsplit(self.url)
            host = parts.hostname or "(socket)"
            return f"{parts.scheme}://{parts.username or ''}@{host}:{parts.port or 5432}{parts.path}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class PoolSettings:
    SECTION: ClassVar[str] = "POOL"

    # pool | none (a connection per request: the slow baseline)
    mode: str = setting("pool", env="DB_POOL_MODE", rule=one_of("pool", "none"))
    min_connections: int = setting(2, env="DB_POOL_MIN_CONNECTIONS", rule=at_least(0))
    # more than [GUNICORN] threads is never used
    max_connections: int = setting(4, env="DB_POOL_MAX_CONNECTIONS", rule=at_least(1))
    # seconds a request waits for a free connection, then 503
    timeout: float = setting(5.0, env="DB_POOL_TIMEOUT", rule=at_least(0, " seconds", strict=True))
    max_waiting: int = setting(100, rule=at_least(0))  # requests allowed to wait at once; beyond it, 503 at once
    # per statement, applied with SET LOCAL (PgBouncer-safe); 0 = off
    statement_timeout_ms: int = setting(5000, env="DB_STATEMENT_TIMEOUT_MS", rule=at_least(0))
    # client-side deadline = statement timeout + this (black-holed links)
    io_grace: float = setting(1.0, rule=at_least(0, " seconds"))
    # seconds; connections are recycled after this (jittered)
    max_lifetime: float = setting(1800.0, rule=at_least(0, " seconds", strict=True))
    # seconds; idle connections above min are closed after this
    max_idle: float = setting(600.0, rule=at_least(0, " seconds", strict=True))
    # seconds idle before a checkout pings the connection
    check_idle_after: float = setting(2.0, rule=at_least(0, " seconds"))
    ping_timeout: float = setting(1.0, rule=at_least(0, " seconds", strict=True))  # seconds a ping may take
    # seconds held before a warning with the borrower's stack; 0 = off
    leak_threshold: float = setting(30.0, rule=at_least(0, " seconds"))
    # backoff while the database is down: first wait (at most reconnect_max_delay, checks.py) and the
    # cap; fail-fast 503s name the cap in Retry-After
    reconnect_initial_delay: float = setting(0.1, rule=at_least(0, " seconds", strict=True))
    reconnect_max_delay: float = setting(1.0, rule=at_least(0, " seconds", strict=True))
    # error | warn | off: workers x max_connections vs the server
    budget_check: str = setting("error", rule=one_of("error", "warn", "off"))
    budget_headroom: int = setting(5, rule=at_least(0))  # connections kept free for admins, migrations and psql
    # Behind PgBouncer: its max_client_conn, checked instead of PostgreSQL's slots (0 = not behind it).
    pgbouncer_max_client_conn: int = setting(0, env="DB_PGBOUNCER_MAX_CLIENT_CONN", rule=at_least(0))

    def io_timeout(self) -> float | None:
        """Client-side deadline for one statement, or None when statement timeouts are off."""
        if self.statement_timeout_ms <= 0:
            return None
        return self.statement_timeout_ms / 1000 + self.io_grace


@dataclass(frozen=True)
class ReplicaSettings:
    """An optional streaming replica for read-only operations. Disabled while `url` is empty."""

    SECTION: ClassVar[str] = "REPLICA"

    url: str = setting("", env="DATABASE_REPLICA_URL", rule=postgres_url(), secret=True)  # holds the password
    # seconds behind the primary before reads go to the primary
    max_lag: float = setting(5.0, env="DB_REPLICA_MAX_LAG", rule=at_least(0, " seconds", strict=True))
    # seconds between lag checks (one query on the replica)
    check_interval: float = setting(1.0, rule=at_least(0, " seconds", strict=True))
    min_connections: int = setting(1, rule=at_least(0))
    max_connections: int = setting(0, rule=at_least(0))  # 0 = the same as [POOL] max_connections

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ApiSettings:
    SECTION: ClassVar[str] = "API"

    tokens: tuple[str, ...] = setting((), env="API_TOKENS", rule=tokens(), secret=True)
    cors_origins: tuple[str, ...] = setting(("http://localhost:3000",), env="CORS_ORIGINS", rule=_CORS)
    validate_responses: bool = setting(False, rule=anything("true"))
    # Retry-After (seconds) of every 503 whose cause does not know better: the pool exhausted, the
    # handler threads full, a lost connection, a deadlock. A database outage advertises the pool's next
    # reconnect attempt when that is later.
    retry_after: int = setting(1, env="API_RETRY_AFTER", rule=at_least(1, " second"))
    # Seconds a request may wait for a handler thread before a 503 (admission control, handlers.py).
    admission_timeout: float = setting(5.0, env="API_ADMISSION_TIMEOUT", rule=between(0, 3600, " seconds", strict=True))
    # The share of a worker's handler threads (and so of its pool connections) one caller (a token; else
    # an address) may hold at once, at least one thread: 0.75 of 4 leaves one for everybody else.
    caller_share: float = setting(
        0.75, env="API_CALLER_SHARE", rule=between(0, 1, " (a share of the threads)", strict=True)
    )
    # Requests per caller (a token; else an address) and window, e.g. 600/minute; empty = no limit.
    # The dashboard costs a unit per 31 days of its range (ratelimit.py).
    rate_limit: str = setting("", env="API_RATE_LIMIT", rule=_RATE)
    # The dashboard's statement timeout (ms; [POOL] statement_timeout_ms when that is lower): a ten-year report on a
    # busy database cannot hold a connection for long (503 statement-timeout past it).
    dashboard_timeout_ms: int = setting(2000, env="API_DASHBOARD_TIMEOUT_MS", rule=at_least(0, strict=True))
    # Seconds a dashboard report is served again to the same range (each answer says its `as_of`); at
    # most 60, 0 = computed for every request (swagger_server/reports.py).
    dashboard_max_age: float = setting(30.0, env="API_DASHBOARD_MAX_AGE", rule=between(0, 60, " seconds"))
    # Seconds between the dashboard roller's passes in each worker (db/rollups.py); 0 = no roller here
    # (reports stay exact, reading more raw rows, until another process or `db rollup` rolls up).
    dashboard_rollup_interval: float = setting(
        10.0, env="API_DASHBOARD_ROLLUP_INTERVAL", rule=between(0.1, 3600, " seconds", off=0)
    )
    # Seconds between a worker's reads of the API keys that changed (identity/keys.py): a revoked key is
    # refused everywhere within this and one read.
    key_refresh: float = setting(2.0, env="API_KEY_REFRESH", rule=between(0.1, 60, " seconds"))
    # An OpenID provider whose JWT access tokens are accepted (identity/oidc.py): its issuer URL (https;
    # discovery at <issuer>/.well-known/openid-configuration), the audience its tokens name for this
    # API (required with an issuer, checks.py), and the claim that binds a token to one customer.
    # Empty issuer: none.
    oidc_issuer: str = setting("", env="API_OIDC_ISSUER", rule=_ISSUER)
    oidc_audience: str = setting("", env="API_OIDC_AUDIENCE", rule=anything("store-api"))
    oidc_customer_claim: str = setting("store_customer_id", env="API_OIDC_CUSTOMER_CLAIM", rule=not_empty("customer"))
    # memory:// (each worker counts its own) or redis://host:port/db (every worker of every host, one count).
    rate_limit_storage: str = setting("memory://", env="API_RATE_LIMIT_STORAGE", rule=_STORAGE, secret=True)
    access_log: bool = setting(True, env="ACCESS_LOG", rule=anything("false"))  # one line per request on stdout
    # json (one JSON object a line, for machines) | text (for a person)
    log_format: str = setting("json", env="LOG_FORMAT", rule=one_of("json", "text"))
    # Limits on what a client may send, enforced before the work (413, 414, 431).
    # 1 MiB; the largest valid body (an order of 100 lines) is ~5 KB
    max_body_bytes: int = setting(1048576, env="API_MAX_BODY_BYTES", rule=at_least(1024))
    max_url_bytes: int = setting(8190, rule=at_least(256))  # the request target (path and query), as gunicorn's
    max_header_bytes: int = setting(32768, rule=at_least(1024))  # the whole request head
    max_headers: int = setting(100, rule=at_least(10))
    # A client gets this long to send its whole head, and then its whole body (408 and the connection
    # closed otherwise): a stalled client holds a socket for at most this long, never a handler thread.
    head_timeout: float = setting(10.0, env="API_HEAD_TIMEOUT", rule=between(0, 3600, " seconds", strict=True))
    body_timeout: float = setting(10.0, env="API_BODY_TIMEOUT", rule=between(0, 3600, " seconds", strict=True))
    # seconds an Idempotency-Key is remembered (per client)
    idempotency_ttl: float = setting(86400.0, env="API_IDEMPOTENCY_TTL", rule=at_least(0, " seconds", strict=True))
    # when on, PATCH and DELETE without If-Match are 428
    require_if_match: bool = setting(False, env="API_REQUIRE_IF_MATCH", rule=anything("true"))
    # when set, GET /metrics needs this bearer token
    metrics_token: str = setting("", env="API_METRICS_TOKEN", rule=_METRICS_TOKEN, secret=True)
    # when set, /metrics is served only on this port (and the API not; another port than [GUNICORN] port)
    metrics_port: int = setting(0, env="API_METRICS_PORT", rule=port(off=True))
    # Networks (CIDR) whose requests' W3C trace context is continued: the TCP peer (the proxy in front,
    # or a caller) must be in one. Anyone else's traceparent starts a new trace, linked to the caller's,
    # and sampled by the configured sampler alone: a caller cannot force its requests to be traced.
    trace_trusted_peers: tuple[str, ...] = setting((), env="API_TRACE_TRUSTED_PEERS", rule=_NETWORKS)


@dataclass(frozen=True)
class ServerSettings:
    SECTION: ClassVar[str] = "GUNICORN"

    # Loopback unless told otherwise (HOST=0.0.0.0): `make run` on a laptop in a cafe serves no one else.
    # The image and the manifests say 0.0.0.0 themselves.
    host: str = setting("127.0.0.1", env="HOST", rule=not_empty("0.0.0.0"))
    port: int = setting(8080, env="PORT", rule=port())
    workers: int = setting(2, env="WEB_CONCURRENCY", rule=at_least(1))
    # handler threads per worker that run Flask (swagger_server/pipeline/handlers.py)
    threads: int = setting(4, env="WEB_THREADS", rule=at_least(1))
    graceful_timeout: int = setting(20, rule=at_least(0, " seconds"))
    log_level: str = setting("info", rule=one_of("debug", "info", "warning", "error", "critical"))


@dataclass(frozen=True)
class MigrateSettings:
    """`db upgrade` (db/migrate.py): how long a migration may hold up traffic, and how long it keeps trying."""

    SECTION: ClassVar[str] = "MIGRATE"

    # Seconds any one lock may be waited for: the longest a request waits behind a migration. Past it
    # the file is rolled back and retried (jittered backoff), so a long reader never piles traffic up.
    lock_timeout: float = setting(0.5, env="DB_MIGRATE_LOCK_TIMEOUT", rule=between(0, 60, " seconds", strict=True))
    # seconds a transactional file may run
    statement_timeout: float = setting(
        60.0, env="DB_MIGRATE_STATEMENT_TIMEOUT", rule=at_least(0, " seconds", strict=True)
    )
    # seconds of retries before `db upgrade` gives up with a line naming the blocker
    deadline: float = setting(600.0, env="DB_MIGRATE_DEADLINE", rule=at_least(0, " seconds"))


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = DatabaseSettings()
    pool: PoolSettings = PoolSettings()
    api: ApiSettings = ApiSettings()
    server: ServerSettings = ServerSettings()
    replica: ReplicaSettings = ReplicaSettings()
    migrate: MigrateSettings = MigrateSettings()
    source: str = "defaults"
    origins: tuple = ()  # ((section.key, where it came from), ...), for check-config
    notes: tuple[str, ...] = ()  # worth saying at start, not errors (loading.log_notes)
    serving_notes: tuple[str, ...] = ()  # the same, said only by what serves requests (not `db upgrade`)

    def with_overrides(self, **sections: Mapping) -> Settings:
        """A copy with some fields replaced, e.g. `with_overrides(pool={"timeout": 1})` (for tests)."""
        changes = {name: replace(getattr(self, name), **values) for name, values in sections.items()}
        return replace(self, **changes)

    def replica_database(self) -> DatabaseSettings:
        """Where the replica is: its URL, with the primary's timeouts and keepalives."""
        return replace(self.database, url=self.replica.url)

    def replica_pool(self) -> PoolSettings:
        """The replica pool's settings: the primary's, with the replica's own sizes."""
        return replace(
            self.pool,
            min_connections=min(self.replica.min_connections, self.replica_max()),
            max_connections=self.replica_max(),
        )

    def replica_max(self) -> int:
        return self.replica.max_connections or self.pool.max_connections


# The table, derived from the dataclasses above: nothing here is written twice.
_SECTION_FIELDS = [f for f in fields(Settings) if hasattr(type(f.default), "SECTION")]
SECTIONS: dict[str, type] = {type(f.default).SECTION: type(f.default) for f in _SECTION_FIELDS}
SECTION_ATTR: dict[str, str] = {type(f.default).SECTION: f.name for f in _SECTION_FIELDS}
# environment variable -> (section, ini key)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    f.metadata["env"]: (section, f.name)
    for section, cls in SECTIONS.items()
    for f in fields(cls)
    if f.metadata.get("env")
}


def label(section: str, key: str) -> str:
    """How an error names a setting: its environment variable (if it has one) and its ini key."""
    env = next(f.metadata["env"] for f in fields(SECTIONS[section]) if f.name == key)
    return f"{env} / [{section}] {key}" if env else f"[{section}] {key}"
