"""The settings, typed and frozen: one dataclass per config.ini section, and the environment variables
that override them. Read by swagger_server.config.loading; checked by swagger_server.config.checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import psycopg2.extensions

DEFAULT_CONFIG = "config.ini"


class ConfigError(Exception):
    """A missing or malformed setting. The message is one line naming the key and where it came from."""


@dataclass(frozen=True)
class DatabaseSettings:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = field(default="", repr=False)
    dbname: str = "store"
    sslmode: str = "prefer"
    connect_timeout: float = 3.0
    # A whole libpq URL (DATABASE_URL or [POSTGRES] url); wins over the keys above. Holds the password.
    url: str = field(default="", repr=False)
    # TCP keepalives and tcp_user_timeout: a half-open connection is detected by the kernel, not never.
    keepalives_idle: int = 30
    tcp_user_timeout_ms: int = 10000

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
    mode: str = "pool"  # pool | none (a connection per request: the slow baseline)
    min_connections: int = 2
    max_connections: int = 4  # more than [GUNICORN] threads is never used
    timeout: float = 5.0  # seconds a request waits for a free connection, then 503
    max_waiting: int = 100  # requests allowed to wait at once; beyond it, 503 at once
    statement_timeout_ms: int = 5000  # per statement, applied with SET LOCAL (PgBouncer-safe); 0 = off
    io_grace: float = 1.0  # client-side deadline = statement timeout + this (black-holed links)
    max_lifetime: float = 1800.0  # seconds; connections are recycled after this (jittered)
    max_idle: float = 600.0  # seconds; idle connections above min are closed after this
    check_idle_after: float = 2.0  # seconds idle before a checkout pings the connection
    ping_timeout: float = 1.0  # seconds a ping may take
    leak_threshold: float = 30.0  # seconds held before a warning with the borrower's stack; 0 = off
    reconnect_initial_delay: float = 0.1  # backoff while the database is down: first wait, seconds
    reconnect_max_delay: float = 1.0  # ... and the cap; fail-fast 503s name this in Retry-After
    budget_check: str = "error"  # error | warn | off: workers x max_connections vs the server
    budget_headroom: int = 5  # connections kept free for admins, migrations and psql
    # Behind PgBouncer: its max_client_conn, checked instead of PostgreSQL's slots (0 = not behind it).
    pgbouncer_max_client_conn: int = 0

    def io_timeout(self) -> float | None:
        """Client-side deadline for one statement, or None when statement timeouts are off."""
        if self.statement_timeout_ms <= 0:
            return None
        return self.statement_timeout_ms / 1000 + self.io_grace


@dataclass(frozen=True)
class ReplicaSettings:
    """An optional streaming replica for read-only operations. Disabled while `url` is empty."""

    url: str = field(default="", repr=False)  # DATABASE_REPLICA_URL; holds the password
    max_lag: float = 5.0  # seconds behind the primary before reads go to the primary
    check_interval: float = 1.0  # seconds between lag checks (one query on the replica)
    min_connections: int = 1
    max_connections: int = 0  # 0 = the same as [POOL] max_connections

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ApiSettings:
    tokens: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ("http://localhost:3000",)
    validate_responses: bool = False
    # Retry-After (seconds) of every 503 whose cause does not know better: the pool exhausted, the
    # handler threads full, a lost connection, a deadlock. A database outage advertises the pool's next
    # reconnect attempt when that is later.
    retry_after: int = 1
    # Seconds a request may wait for a handler thread before a 503 (admission control, handlers.py).
    admission_timeout: float = 5.0
    # The share of a worker's handler threads (and so of its pool connections) one caller (a token; else
    # an address) may hold at once, at least one thread: 0.75 of 4 leaves one for everybody else.
    caller_share: float = 0.75
    # Requests per caller (a token; else an address) and window, e.g. 600/minute; empty = no limit.
    # The dashboard costs a unit per 31 days of its range (ratelimit.py).
    rate_limit: str = ""
    # The dashboard's statement timeout (ms; [POOL] statement_timeout_ms when that is lower): a ten-year report on a
    # busy database cannot hold a connection for long (503 statement-timeout past it).
    dashboard_timeout_ms: int = 2000
    # Seconds a dashboard report is served again to the same range (each answer says its `as_of`); at
    # most 60, 0 = computed for every request (swagger_server/reports.py).
    dashboard_max_age: float = 30.0
    # Seconds between the dashboard roller's passes in each worker (db/rollups.py); 0 = no roller here
    # (reports stay exact, reading more raw rows, until another process or `db rollup` rolls up).
    dashboard_rollup_interval: float = 10.0
    # Seconds between a worker's reads of the API keys that changed (identity/keys.py): a revoked key is
    # refused everywhere within this and one read.
    key_refresh: float = 2.0
    # An OpenID provider whose JWT access tokens are accepted (identity/oidc.py): its issuer URL (https;
    # discovery at <issuer>/.well-known/openid-configuration), the audience its tokens name for this
    # API, and the claim that binds a token to one customer. Empty issuer: none.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_customer_claim: str = "store_customer_id"
    # memory:// (each worker counts its own) or redis://host:port/db (every worker of every host, one count).
    rate_limit_storage: str = field(default="memory://", repr=False)
    access_log: bool = True  # one line per request on stdout
    log_format: str = "json"  # json (one JSON object a line, for machines) | text (for a person)
    # Limits on what a client may send, enforced before the work (413, 414, 431).
    max_body_bytes: int = 1048576  # 1 MiB; the largest valid body (an order of 100 lines) is ~5 KB
    max_url_bytes: int = 8190  # the request target (path and query), as gunicorn's default
    max_header_bytes: int = 32768  # the whole request head
    max_headers: int = 100
    # A client gets this long to send its whole head, and then its whole body (408 and the connection
    # closed otherwise): a stalled client holds a socket for at most this long, never a handler thread.
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    idempotency_ttl: float = 86400.0  # seconds an Idempotency-Key is remembered (per client)
    require_if_match: bool = False  # when on, PATCH and DELETE without If-Match are 428
    metrics_token: str = field(default="", repr=False)  # when set, GET /metrics needs this bearer token
    metrics_port: int = 0  # when set, /metrics is served only on this port (and the API not)
    # Networks (CIDR) whose requests' W3C trace context is continued: the TCP peer (the proxy in front,
    # or a caller) must be in one. Anyone else's traceparent starts a new trace, linked to the caller's,
    # and sampled by the configured sampler alone: a caller cannot force its requests to be traced.
    trace_trusted_peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerSettings:
    # Loopback unless told otherwise (HOST=0.0.0.0): `make run` on a laptop in a cafe serves no one else.
    # The image and the manifests say 0.0.0.0 themselves.
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 4  # handler threads per worker that run Flask (swagger_server/pipeline/handlers.py)
    graceful_timeout: int = 20
    log_level: str = "info"


@dataclass(frozen=True)
class MigrateSettings:
    """`db upgrade` (db/migrate.py): how long a migration may hold up traffic, and how long it keeps trying."""

    # Seconds any one lock may be waited for: the longest a request waits behind a migration. Past it
    # the file is rolled back and retried (jittered backoff), so a long reader never piles traffic up.
    lock_timeout: float = 0.5
    statement_timeout: float = 60.0  # seconds a transactional file may run
    deadline: float = 600.0  # seconds of retries before `db upgrade` gives up with a line naming the blocker


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


SECTIONS = {
    "POSTGRES": DatabaseSettings,
    "POOL": PoolSettings,
    "API": ApiSettings,
    "REPLICA": ReplicaSettings,
    "GUNICORN": ServerSettings,
    "MIGRATE": MigrateSettings,
}
SECTION_ATTR = {
    "POSTGRES": "database",
    "POOL": "pool",
    "API": "api",
    "REPLICA": "replica",
    "GUNICORN": "server",
    "MIGRATE": "migrate",
}

# environment variable -> (section, ini key)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("POSTGRES", "url"),
    "DB_POOL_MODE": ("POOL", "mode"),
    "DB_POOL_MIN_CONNECTIONS": ("POOL", "min_connections"),
    "DB_POOL_MAX_CONNECTIONS": ("POOL", "max_connections"),
    "DB_POOL_TIMEOUT": ("POOL", "timeout"),
    "DB_STATEMENT_TIMEOUT_MS": ("POOL", "statement_timeout_ms"),
    "DB_PGBOUNCER_MAX_CLIENT_CONN": ("POOL", "pgbouncer_max_client_conn"),
    "DATABASE_REPLICA_URL": ("REPLICA", "url"),
    "DB_REPLICA_MAX_LAG": ("REPLICA", "max_lag"),
    "API_TOKENS": ("API", "tokens"),
    "API_RETRY_AFTER": ("API", "retry_after"),
    "API_ADMISSION_TIMEOUT": ("API", "admission_timeout"),
    "API_CALLER_SHARE": ("API", "caller_share"),
    "API_KEY_REFRESH": ("API", "key_refresh"),
    "API_OIDC_ISSUER": ("API", "oidc_issuer"),
    "API_OIDC_AUDIENCE": ("API", "oidc_audience"),
    "API_OIDC_CUSTOMER_CLAIM": ("API", "oidc_customer_claim"),
    "API_RATE_LIMIT": ("API", "rate_limit"),
    "API_DASHBOARD_TIMEOUT_MS": ("API", "dashboard_timeout_ms"),
    "API_DASHBOARD_MAX_AGE": ("API", "dashboard_max_age"),
    "API_DASHBOARD_ROLLUP_INTERVAL": ("API", "dashboard_rollup_interval"),
    "API_RATE_LIMIT_STORAGE": ("API", "rate_limit_storage"),
    "CORS_ORIGINS": ("API", "cors_origins"),
    "ACCESS_LOG": ("API", "access_log"),
    "LOG_FORMAT": ("API", "log_format"),
    "API_MAX_BODY_BYTES": ("API", "max_body_bytes"),
    "API_HEAD_TIMEOUT": ("API", "head_timeout"),
    "API_BODY_TIMEOUT": ("API", "body_timeout"),
    "API_IDEMPOTENCY_TTL": ("API", "idempotency_ttl"),
    "API_REQUIRE_IF_MATCH": ("API", "require_if_match"),
    "API_METRICS_TOKEN": ("API", "metrics_token"),
    "API_METRICS_PORT": ("API", "metrics_port"),
    "API_TRACE_TRUSTED_PEERS": ("API", "trace_trusted_peers"),
    "DB_MIGRATE_LOCK_TIMEOUT": ("MIGRATE", "lock_timeout"),
    "DB_MIGRATE_STATEMENT_TIMEOUT": ("MIGRATE", "statement_timeout"),
    "DB_MIGRATE_DEADLINE": ("MIGRATE", "deadline"),
    "HOST": ("GUNICORN", "host"),
    "PORT": ("GUNICORN", "port"),
    "WEB_CONCURRENCY": ("GUNICORN", "workers"),
    "WEB_THREADS": ("GUNICORN", "threads"),
}


def label(section: str, key: str) -> str:
    """How an error names a setting: its environment variable (if it has one) and its ini key."""
    env = next((var for var, where in ENV_OVERRIDES.items() if where == (section, key)), None)
    return f"{env} / [{section}] {key}" if env else f"[{section}] {key}"
