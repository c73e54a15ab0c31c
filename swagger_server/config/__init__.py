"""Settings: the only reader of config.ini and os.environ. Read once, typed, validated, frozen.

- `settings`: the dataclasses (one per config.ini section) and the environment overrides;
- `loading`: reading the file and the environment (`load_settings`), and `describe` for check-config;
- `checks`: ranges and relations (`validate`), and the token grammar;
- `discovery`: `make run`'s embedded server, when nothing names a server.
"""

from swagger_server.config.checks import TOKEN_SCOPES, parse_token, token_problem, validate
from swagger_server.config.discovery import DATA_DIR, EMBEDDED_URL_FILE, embedded_url, names_a_server
from swagger_server.config.loading import _INI_KEYS, QUIET_NOTES, describe, load_settings, log_notes, process_settings
from swagger_server.config.settings import (
    DEFAULT_CONFIG,
    ENV_OVERRIDES,
    ApiSettings,
    ConfigError,
    DatabaseSettings,
    MigrateSettings,
    PoolSettings,
    ReplicaSettings,
    ServerSettings,
    Settings,
    label,
)

__all__ = [
    "DATA_DIR",
    "DEFAULT_CONFIG",
    "EMBEDDED_URL_FILE",
    "ENV_OVERRIDES",
    "TOKEN_SCOPES",
    "_INI_KEYS",
    "ApiSettings",
    "ConfigError",
    "DatabaseSettings",
    "MigrateSettings",
    "PoolSettings",
    "ReplicaSettings",
    "ServerSettings",
    "Settings",
    "describe",
    "embedded_url",
    "label",
    "load_settings",
    "log_notes",
    "QUIET_NOTES",
    "names_a_server",
    "parse_token",
    "process_settings",
    "token_problem",
    "validate",
]
