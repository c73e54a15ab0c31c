"""Settings: the only reader of config.ini and os.environ. Read once, typed, validated, frozen."""

from __future__ import annotations

import configparser
import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2.extensions

logger = logging.getLogger(__name__)

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
    retry_after: int = 1  # seconds advertised when the pool is exhausted
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


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 2
    threads: int = 4  # handler threads per worker that run Flask (swagger_server/handlers.py)
    graceful_timeout: int = 20
    log_level: str = "info"


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = DatabaseSettings()
    pool: PoolSettings = PoolSettings()
    api: ApiSettings = ApiSettings()
    server: ServerSettings = ServerSettings()
    replica: ReplicaSettings = ReplicaSettings()
    source: str = "defaults"
    origins: tuple = ()  # ((section.key, where it came from), ...), for check-config

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


# ---------------------------------------------------------------------------------------------------
# Parsing: each value carries where it came from, so an error names the key and the file or variable.


def _int(raw: str) -> int:
    return int(raw.strip())


def _float(raw: str) -> float:
    value = float(raw.strip())
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _str(raw: str) -> str:
    return raw.strip()


_KIND = {
    _int: "an integer",
    _float: "a number",
    _bool: "true or false",
    _list: "a comma-separated list",
    _str: "a string",
}

_SECTIONS = {
    "POSTGRES": DatabaseSettings,
    "POOL": PoolSettings,
    "API": ApiSettings,
    "REPLICA": ReplicaSettings,
    "GUNICORN": ServerSettings,
}
_SECTION_ATTR = {"POSTGRES": "database", "POOL": "pool", "API": "api", "REPLICA": "replica", "GUNICORN": "server"}
# A field's annotation (a string, under `from __future__ import annotations`) picks its parser.
_PARSERS = {"int": _int, "float": _float, "bool": _bool, "str": _str, "tuple[str, ...]": _list}


def _ini_keys(cls) -> dict[str, tuple[str, Callable, bool]]:
    """key in the ini -> (dataclass field, parser, secret): every field of a section's dataclass is
    a key, and a field declared `repr=False` holds a secret (never echoed in an error)."""
    return {f.name: (f.name, _PARSERS[f.type], not f.repr) for f in fields(cls)}


_INI_KEYS: dict[str, dict[str, tuple[str, Callable, bool]]] = {name: _ini_keys(cls) for name, cls in _SECTIONS.items()}

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
    "PORT": ("GUNICORN", "port"),
    "WEB_CONCURRENCY": ("GUNICORN", "workers"),
    "WEB_THREADS": ("GUNICORN", "threads"),
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read config.ini (or $APP_CONFIG) and the environment overrides; validate; return Settings.

    Raises ConfigError with one line naming the key and its source. A missing default config.ini
    is fine (built-in defaults apply); a missing file named by APP_CONFIG is an error.
    """
    env = os.environ if environ is None else environ
    path = env.get("APP_CONFIG")
    explicit = path is not None
    path = Path(path or DEFAULT_CONFIG)
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    if path.exists():
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
        source = str(path)
    elif explicit:
        raise ConfigError(f"APP_CONFIG={path} (environment): file not found")
    else:
        source = "defaults"

    values: dict[str, dict] = {attr: {} for attr in _SECTION_ATTR.values()}
    origins: dict[str, str] = {}
    for section in parser.sections():
        if section not in _INI_KEYS:
            raise ConfigError(
                f"[{section}] in {path}: unknown section (expected one of {', '.join(_INI_KEYS)})"
                + _did_you_mean(section, _INI_KEYS)
            )
        for key, raw in parser.items(section):
            key, raw = _tutorial_key(section, key, raw, path)
            if key not in _INI_KEYS[section]:
                raise ConfigError(f"[{section}] {key} in {path}: unknown key" + _did_you_mean(key, _INI_KEYS[section]))
            name, parse, secret = _INI_KEYS[section][key]
            values[_SECTION_ATTR[section]][name] = _parse(parse, raw, f"[{section}] {key} in {path}", secret)
            origins[f"{section}.{key}"] = str(path)
    for var, (section, key) in ENV_OVERRIDES.items():
        raw = env.get(var)
        if raw is None or (raw == "" and var != "API_TOKENS"):
            continue
        name, parse, secret = _INI_KEYS[section][key]
        values[_SECTION_ATTR[section]][name] = _parse(parse, raw, f"{var} (environment)", secret)
        origins[f"{section}.{key}"] = f"{var} (environment)"
    for var in env:
        if var.startswith(("DB_", "API_", "WEB_")) and var not in ENV_OVERRIDES:
            logger.warning(
                "%s (environment) is not a setting of this service; ignored%s", var, _did_you_mean(var, ENV_OVERRIDES)
            )

    settings = Settings(
        database=DatabaseSettings(**values["database"]),
        pool=PoolSettings(**values["pool"]),
        api=ApiSettings(**values["api"]),
        server=ServerSettings(**values["server"]),
        replica=ReplicaSettings(**values["replica"]),
        source=source,
        origins=tuple(sorted(origins.items())),
    )
    validate(settings)
    return settings


# The classic tutorial's [POSTGRES] keys (URL holding a host name, PORT, USER, PW, DB) work unchanged.
_TUTORIAL_KEYS = {"pw": "password", "db": "dbname"}


def _tutorial_key(section: str, key: str, raw: str, path) -> tuple[str, str]:
    if section != "POSTGRES":
        return key, raw
    if key in _TUTORIAL_KEYS:
        logger.warning("[POSTGRES] %s in %s: read as %s (the canonical name)", key, path, _TUTORIAL_KEYS[key])
        return _TUTORIAL_KEYS[key], raw
    if key == "url" and raw.strip() and not raw.strip().startswith(("postgres://", "postgresql://")):
        logger.warning("[POSTGRES] url in %s holds a host name: read as host (the canonical name)", path)
        return "host", raw
    return key, raw


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def names_a_server(environ: Mapping[str, str] | None = None) -> str | None:
    """What names a database server, if anything does: DATABASE_URL, or [POSTGRES] host/url in the
    config file. None means nothing does (`make run` then starts an embedded PostgreSQL)."""
    env = os.environ if environ is None else environ
    if env.get("DATABASE_URL"):
        return "DATABASE_URL (environment)"
    path = Path(env.get("APP_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        return None
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return None  # load_settings reports it
    for key in ("url", "host"):
        if parser.has_option("POSTGRES", key) and parser.get("POSTGRES", key).strip():
            return f"[POSTGRES] {key} in {path}"
    return None


# Written by `make run` (scripts/run.py) while its embedded PostgreSQL runs, removed when it stops.
DATA_DIR = Path(__file__).resolve().parent.parent / ".data"
EMBEDDED_URL_FILE = DATA_DIR / "database-url"


def embedded_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The URL of `make run`'s embedded server, when it is running and nothing else names a server."""
    if names_a_server(environ) is not None:
        return None
    if not EMBEDDED_URL_FILE.exists() or not (DATA_DIR / "postgres" / "postmaster.pid").exists():
        return None
    return EMBEDDED_URL_FILE.read_text().strip() or None


def describe(settings: Settings) -> list[str]:
    """The effective settings, one per line, secrets hidden, each with where it came from."""
    origins = dict(settings.origins)
    lines = []
    for section, cls in _SECTIONS.items():
        current = getattr(settings, _SECTION_ATTR[section])
        for f in fields(cls):
            value = getattr(current, f.name)
            if f.name == "url" and value:
                shown = DatabaseSettings(url=value).safe_dsn()
            elif not f.repr:
                shown = "***" if value else "(empty)"
            elif isinstance(value, tuple):
                shown = ", ".join(value) or "(empty)"
            else:
                shown = str(value)
            lines.append(f"[{section}] {f.name} = {shown}   # {origins.get(f'{section}.{f.name}', 'default')}")
    lines.append(f"# the database used: {settings.database.safe_dsn()}")
    return lines


def _parse(parse: Callable, raw: str, where: str, secret: bool = False):
    try:
        return parse(raw)
    except (ValueError, TypeError):
        shown = "***" if secret else repr(raw)
        raise ConfigError(f"{where}: expected {_KIND[parse]}, got {shown}") from None


TOKEN_SCOPES = ("read", "write")


def parse_token(entry: str) -> tuple[str, str, str]:
    """`[read:|write:][sha256:]<secret or hex digest>` -> (scope, "sha256" or "plain", value).

    A token without a scope may write (and read). `sha256:` followed by 64 hex digits is the token's
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


def validate(settings: Settings) -> None:
    """Check ranges and relations between settings; raise ConfigError naming the offending key."""
    db, pool, api, server = settings.database, settings.pool, settings.api, settings.server
    replica = settings.replica
    checks = [
        (pool.mode in ("pool", "none"), "DB_POOL_MODE / [POOL] mode", f"must be 'pool' or 'none', got {pool.mode!r}"),
        (pool.min_connections >= 0, "DB_POOL_MIN_CONNECTIONS / [POOL] min_connections", "must be >= 0"),
        (pool.max_connections >= 1, "DB_POOL_MAX_CONNECTIONS / [POOL] max_connections", "must be >= 1"),
        (
            pool.min_connections <= pool.max_connections,
            "DB_POOL_MIN_CONNECTIONS / [POOL] min_connections",
            f"({pool.min_connections}) must not exceed max_connections ({pool.max_connections})",
        ),
        (pool.timeout > 0, "DB_POOL_TIMEOUT / [POOL] timeout", "must be > 0 seconds"),
        (pool.max_waiting >= 0, "[POOL] max_waiting", "must be >= 0"),
        (pool.statement_timeout_ms >= 0, "DB_STATEMENT_TIMEOUT_MS / [POOL] statement_timeout_ms", "must be >= 0"),
        (pool.max_lifetime > 0, "[POOL] max_lifetime", "must be > 0 seconds"),
        (pool.max_idle > 0, "[POOL] max_idle", "must be > 0 seconds"),
        (pool.check_idle_after >= 0, "[POOL] check_idle_after", "must be >= 0 seconds"),
        (pool.ping_timeout > 0, "[POOL] ping_timeout", "must be > 0 seconds"),
        (pool.leak_threshold >= 0, "[POOL] leak_threshold", "must be >= 0 seconds"),
        (
            0 < pool.reconnect_initial_delay <= pool.reconnect_max_delay,
            "[POOL] reconnect_initial_delay",
            "must be > 0 and <= reconnect_max_delay",
        ),
        (
            pool.pgbouncer_max_client_conn >= 0,
            "DB_PGBOUNCER_MAX_CLIENT_CONN / [POOL] pgbouncer_max_client_conn",
            "must be >= 0",
        ),
        (
            pool.budget_check in ("error", "warn", "off"),
            "[POOL] budget_check",
            f"must be error, warn or off, got {pool.budget_check!r}",
        ),
        (db.connect_timeout > 0, "[POSTGRES] connect_timeout", "must be > 0 seconds"),
        (1 <= db.port <= 65535, "[POSTGRES] port", f"must be a TCP port, got {db.port}"),
        (
            not db.url or db.url.startswith(("postgres://", "postgresql://")),
            "DATABASE_URL / [POSTGRES] url",
            "must start with postgresql://",
        ),
        (bool(db.url) or bool(db.dbname), "[POSTGRES] dbname", "must not be empty"),
        (
            "*" not in api.cors_origins,
            "CORS_ORIGINS / [API] cors_origins",
            "'*' is not allowed: list the origins that may call the API",
        ),
        (
            all(o.startswith(("http://", "https://")) for o in api.cors_origins),
            "CORS_ORIGINS / [API] cors_origins",
            "each origin must start with http:// or https://",
        ),
        (
            not replica.url or replica.url.startswith(("postgres://", "postgresql://")),
            "DATABASE_REPLICA_URL / [REPLICA] url",
            "must start with postgresql://",
        ),
        (replica.max_lag > 0, "DB_REPLICA_MAX_LAG / [REPLICA] max_lag", "must be > 0 seconds"),
        (replica.check_interval > 0, "[REPLICA] check_interval", "must be > 0 seconds"),
        (replica.min_connections >= 0, "[REPLICA] min_connections", "must be >= 0"),
        (replica.max_connections >= 0, "[REPLICA] max_connections", "must be >= 0 (0 = as [POOL])"),
        (
            api.log_format in ("json", "text"),
            "LOG_FORMAT / [API] log_format",
            f"must be json or text, got {api.log_format!r}",
        ),
        (api.retry_after >= 1, "[API] retry_after", "must be >= 1 second"),
        (
            all(token_problem(t) is None for t in api.tokens),
            "API_TOKENS / [API] tokens",
            next((token_problem(t) for t in api.tokens if token_problem(t)), ""),
        ),
        (api.max_body_bytes >= 1024, "API_MAX_BODY_BYTES / [API] max_body_bytes", "must be >= 1024"),
        (api.max_url_bytes >= 256, "[API] max_url_bytes", "must be >= 256"),
        (api.max_header_bytes >= 1024, "[API] max_header_bytes", "must be >= 1024"),
        (api.max_headers >= 10, "[API] max_headers", "must be >= 10"),
        (0 < api.head_timeout <= 3600, "API_HEAD_TIMEOUT / [API] head_timeout", "must be > 0 and <= 3600 seconds"),
        (0 < api.body_timeout <= 3600, "API_BODY_TIMEOUT / [API] body_timeout", "must be > 0 and <= 3600 seconds"),
        (api.idempotency_ttl > 0, "API_IDEMPOTENCY_TTL / [API] idempotency_ttl", "must be > 0 seconds"),
        (1 <= server.port <= 65535, "PORT / [GUNICORN] port", f"must be a TCP port, got {server.port}"),
        (
            api.metrics_port == 0 or (1 <= api.metrics_port <= 65535 and api.metrics_port != server.port),
            "API_METRICS_PORT / [API] metrics_port",
            "must be 0 (off) or a TCP port other than the API's",
        ),
        (server.workers >= 1, "WEB_CONCURRENCY / [GUNICORN] workers", "must be >= 1"),
        (server.threads >= 1, "WEB_THREADS / [GUNICORN] threads", "must be >= 1"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message} (from {settings.source} and the environment)")
