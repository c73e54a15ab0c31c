"""What Settings must satisfy: each field's own rule (declared beside it in settings.py), then the
relations between settings. Errors name the setting by its environment variable and ini key
(settings.label), never by hand."""

from __future__ import annotations

from dataclasses import fields

from swagger_server.config.rules import TOKEN_SCOPES, parse_token, rule_of, token_problem
from swagger_server.config.settings import SECTION_ATTR, SECTIONS, ConfigError, Settings, label

__all__ = ["TOKEN_SCOPES", "parse_token", "token_problem", "validate"]


def _relations(settings: Settings) -> list[tuple[bool, str, str]]:
    db, pool, api, server = settings.database, settings.pool, settings.api, settings.server
    return [
        (
            pool.min_connections <= pool.max_connections,
            label("POOL", "min_connections"),
            f"({pool.min_connections}) must not exceed max_connections ({pool.max_connections})",
        ),
        (
            pool.reconnect_initial_delay <= pool.reconnect_max_delay,
            label("POOL", "reconnect_initial_delay"),
            "must be > 0 and <= reconnect_max_delay",
        ),
        (bool(db.url) or bool(db.dbname), label("POSTGRES", "dbname"), "must not be empty"),
        (
            not api.oidc_issuer or bool(api.oidc_audience),
            label("API", "oidc_audience"),
            "must be set with oidc_issuer (the audience this API's tokens name)",
        ),
        (
            api.metrics_port != server.port,
            label("API", "metrics_port"),
            "must be 0 (off) or a TCP port other than the API's",
        ),
    ]


def validate(settings: Settings) -> None:
    """Check each setting's rule, then the relations; raise ConfigError naming the offending key."""
    for section, cls in SECTIONS.items():
        values = getattr(settings, SECTION_ATTR[section])
        for f in fields(cls):
            problem = rule_of(f).problem(getattr(values, f.name))
            if problem is not None:
                raise ConfigError(f"{label(section, f.name)}: {problem} (from {settings.source} and the environment)")
    for ok, key, message in _relations(settings):
        if not ok:
            raise ConfigError(f"{key}: {message} (from {settings.source} and the environment)")
