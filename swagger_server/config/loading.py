"""Reading config.ini (or $APP_CONFIG) and the environment into Settings: the only reader of both.

Each value carries where it came from, so an error names the key and the file or variable.
"""

from __future__ import annotations

import configparser
import difflib
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path

from swagger_server.config.checks import validate
from swagger_server.config.settings import (
    DEFAULT_CONFIG,
    ENV_OVERRIDES,
    SECTION_ATTR,
    SECTIONS,
    ConfigError,
    DatabaseSettings,
    Settings,
)
from swagger_server.text import first_line

logger = logging.getLogger(__name__)


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

# A field's annotation (a string, under `from __future__ import annotations`) picks its parser.
_PARSERS = {"int": _int, "float": _float, "bool": _bool, "str": _str, "tuple[str, ...]": _list}


def _ini_keys(cls) -> dict[str, tuple[str, Callable, bool]]:
    """key in the ini -> (dataclass field, parser, secret): every field of a section's dataclass is
    a key, and a field declared `repr=False` holds a secret (never echoed in an error)."""
    return {f.name: (f.name, _PARSERS[f.type], not f.repr) for f in fields(cls)}


_INI_KEYS: dict[str, dict[str, tuple[str, Callable, bool]]] = {name: _ini_keys(cls) for name, cls in SECTIONS.items()}


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
            raise ConfigError(f"{path}: cannot parse: {first_line(exc)}") from None
        source = str(path)
    elif explicit:
        raise ConfigError(f"APP_CONFIG={path} (environment): file not found")
    else:
        source = "defaults"

    values: dict[str, dict] = {attr: {} for attr in SECTION_ATTR.values()}
    origins: dict[str, str] = {}
    notes: list[str] = []  # worth saying, not errors: said once per start by the entry point (log_notes)
    for section in parser.sections():
        if section not in _INI_KEYS:
            raise ConfigError(
                f"[{section}] in {path}: unknown section (expected one of {', '.join(_INI_KEYS)})"
                + _did_you_mean(section, _INI_KEYS)
            )
        for key, raw in parser.items(section):
            key, raw = _tutorial_key(section, key, raw, path, notes)
            if key not in _INI_KEYS[section]:
                raise ConfigError(f"[{section}] {key} in {path}: unknown key" + _did_you_mean(key, _INI_KEYS[section]))
            name, parse, secret = _INI_KEYS[section][key]
            values[SECTION_ATTR[section]][name] = _parse(parse, raw, f"[{section}] {key} in {path}", secret)
            origins[f"{section}.{key}"] = str(path)
    for var, (section, key) in ENV_OVERRIDES.items():
        raw = env.get(var)
        if raw is None or (raw == "" and var != "API_TOKENS"):
            continue
        name, parse, secret = _INI_KEYS[section][key]
        values[SECTION_ATTR[section]][name] = _parse(parse, raw, f"{var} (environment)", secret)
        origins[f"{section}.{key}"] = f"{var} (environment)"
    for var in env:
        if var.startswith(("DB_", "API_", "WEB_")) and var not in ENV_OVERRIDES:
            notes.append(
                f"{var} (environment) is not a setting of this service; ignored{_did_you_mean(var, ENV_OVERRIDES)}"
            )

    settings = Settings(
        # Every section of the table, by its attribute ([MIGRATE] was read and then left out here:
        # DB_MIGRATE_LOCK_TIMEOUT never reached `db upgrade`).
        **{attr: SECTIONS[section](**values[attr]) for section, attr in SECTION_ATTR.items()},
        source=source,
        origins=tuple(sorted(origins.items())),
    )
    validate(settings)
    serving = []
    if not settings.api.tokens:
        serving.append(
            "no API tokens configured (API_TOKENS / [API] tokens): every operation that needs a token answers 401"
        )
    return replace(settings, notes=tuple(notes), serving_notes=tuple(serving))


QUIET_NOTES = "STORE_API_NOTES_SAID"  # set by a parent that has said the notes (make run) for its children


def log_notes(
    settings: Settings, environ: Mapping[str, str] | None = None, say: Callable | None = None, serving: bool = True
) -> None:
    """Say the settings' notes (a warning each, or through `say`), once per start: not when a parent
    process has said them already (QUIET_NOTES in the environment). The notes about serving requests
    (no tokens) only when `serving`: `db upgrade` has nothing to do with them."""
    env = os.environ if environ is None else environ
    if env.get(QUIET_NOTES):
        return
    for note in (*settings.notes, *(settings.serving_notes if serving else ())):
        if say is not None:
            say(note)
        else:
            logger.warning("%s", note)


# The classic tutorial's [POSTGRES] keys (URL holding a host name, PORT, USER, PW, DB) work unchanged.
_TUTORIAL_KEYS = {"pw": "password", "db": "dbname"}


def _tutorial_key(section: str, key: str, raw: str, path, notes: list[str]) -> tuple[str, str]:
    if section != "POSTGRES":
        return key, raw
    if key in _TUTORIAL_KEYS:
        notes.append(f"[POSTGRES] {key} in {path}: read as {_TUTORIAL_KEYS[key]} (the canonical name)")
        return _TUTORIAL_KEYS[key], raw
    if key == "url" and raw.strip() and not raw.strip().startswith(("postgres://", "postgresql://")):
        notes.append(f"[POSTGRES] url in {path} holds a host name: read as host (the canonical name)")
        return "host", raw
    return key, raw


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def describe(settings: Settings) -> list[str]:
    """The effective settings, one per line, secrets hidden, each with where it came from."""
    origins = dict(settings.origins)
    lines = []
    for section, cls in SECTIONS.items():
        current = getattr(settings, SECTION_ATTR[section])
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


@functools.cache
def process_settings() -> Settings:
    """The settings of this process, read once. gunicorn's master reads them for its own settings
    (gunicorn.conf.py), then forgets this module so that a reload serves the code on disk; each
    worker reads them once more, from the same file and environment."""
    return load_settings()
