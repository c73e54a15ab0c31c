"""Configuration: read once, validated, one clear line on error, the password never shown."""

import subprocess
import sys
from pathlib import Path

import pytest

from swagger_server.config import ConfigError, load_settings, names_a_server

ROOT = Path(__file__).resolve().parents[2]
EMPTY = str(Path(__file__).parents[1] / "empty.ini")


def test_defaults_and_environment_overrides():
    settings = load_settings(
        {
            "APP_CONFIG": EMPTY,
            "DB_POOL_MAX_CONNECTIONS": "7",
            "DB_POOL_TIMEOUT": "2.5",
            "DB_POOL_MODE": "none",
            "WEB_CONCURRENCY": "3",
            "PORT": "9000",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "API_TOKENS": "token-x1,read:token-y2",
        }
    )
    assert settings.pool.max_connections == 7 and settings.pool.timeout == 2.5 and settings.pool.mode == "none"
    assert settings.server.workers == 3 and settings.server.port == 9000
    assert settings.api.cors_origins == ("https://a.example", "https://b.example")
    assert settings.api.tokens == ("token-x1", "read:token-y2")


def test_ini_file_is_read_and_environment_wins(tmp_path):
    ini = tmp_path / "config.ini"
    ini.write_text("[POSTGRES]\nhost = db.internal\npassword = hunter2\n[POOL]\nmax_connections = 5\n")
    settings = load_settings({"APP_CONFIG": str(ini), "DB_POOL_MAX_CONNECTIONS": "6"})
    assert settings.database.host == "db.internal" and settings.pool.max_connections == 6
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.database.safe_dsn()
    assert "password=hunter2" in settings.database.dsn()


def test_database_url_wins_and_its_password_is_hidden():
    settings = load_settings({"APP_CONFIG": EMPTY, "DATABASE_URL": "postgresql://app:s3cret@db:6543/store"})
    assert "s3cret" not in repr(settings)
    assert settings.database.safe_dsn() == "postgresql://app@db:6543/store"
    dsn = settings.database.dsn("store-api:1")
    assert "port=6543" in dsn and "application_name=store-api:1" in dsn and "tcp_user_timeout" in dsn


SECRET_URL = "postgresql://app:pw-s3cret@db/store"  # in every row: no message may show its password


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"DB_POOL_MAX_CONNECTIONS": "lots"}, "DB_POOL_MAX_CONNECTIONS (environment): expected an integer, got 'lots'"),
        ({"DB_POOL_TIMEOUT": "-1"}, "DB_POOL_TIMEOUT / [POOL] timeout: must be > 0 seconds"),
        ({"DB_POOL_TIMEOUT": "nan"}, "DB_POOL_TIMEOUT (environment): expected a number, got 'nan'"),
        ({"DB_POOL_TIMEOUT": "inf"}, "DB_POOL_TIMEOUT (environment): expected a number, got 'inf'"),
        ({"DB_POOL_MODE": "maybe"}, "DB_POOL_MODE / [POOL] mode: must be pool or none, got 'maybe'"),
        (
            {"DB_POOL_MIN_CONNECTIONS": "9", "DB_POOL_MAX_CONNECTIONS": "3"},
            "DB_POOL_MIN_CONNECTIONS / [POOL] min_connections: (9) must not exceed",
        ),
        ({"CORS_ORIGINS": "*"}, "CORS_ORIGINS / [API] cors_origins: '*' is not allowed"),
        ({"CORS_ORIGINS": "localhost:3000"}, "CORS_ORIGINS / [API] cors_origins: each origin must start with http://"),
        ({"DATABASE_URL": "mysql://x:pw-s3cret@h/d"}, "DATABASE_URL / [POSTGRES] url: must start with postgresql://"),
        ({"APP_CONFIG": "/nonexistent/config.ini"}, "APP_CONFIG=/nonexistent/config.ini (environment): file not found"),
        ({"ACCESS_LOG": "sometimes"}, "ACCESS_LOG (environment): expected true or false, got 'sometimes'"),
        ({"PORT": "0"}, "PORT / [GUNICORN] port: must be a TCP port, got 0"),
        ({"PORT": "65536"}, "PORT / [GUNICORN] port: must be a TCP port, got 65536"),
        ({"API_METRICS_PORT": "65536"}, "API_METRICS_PORT / [API] metrics_port: must be 0 (off) or a TCP port"),
        (
            {"API_METRICS_PORT": "8080", "PORT": "8080"},
            "API_METRICS_PORT / [API] metrics_port: must be 0 (off) or a TCP port other than the API's",
        ),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY / [GUNICORN] workers: must be >= 1"),
        ({"WEB_THREADS": "0"}, "WEB_THREADS / [GUNICORN] threads: must be >= 1"),
        (
            {"DATABASE_REPLICA_URL": "mysql://r:pw-s3cret@h/d"},
            "DATABASE_REPLICA_URL / [REPLICA] url: must start with postgresql://",
        ),
        ({"DB_REPLICA_MAX_LAG": "0"}, "DB_REPLICA_MAX_LAG / [REPLICA] max_lag: must be > 0 seconds"),
        ({"DB_REPLICA_MAX_LAG": "soon"}, "DB_REPLICA_MAX_LAG (environment): expected a number, got 'soon'"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(env, expected):
    with pytest.raises(ConfigError) as error:
        load_settings({"APP_CONFIG": EMPTY, "DATABASE_URL": SECRET_URL, **env})
    assert expected in str(error.value)
    assert "\n" not in str(error.value)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    "ini, expected",
    [
        ("[POOL]\ntimeout = soon\n", r"\[POOL\] timeout in .*config.ini: expected a number, got 'soon'"),
        ("[POOL]\ntimeout = inf\n", r"\[POOL\] timeout in .*: expected a number, got 'inf'"),
        ("[POOL]\nbudget_check = maybe\n", r"\[POOL\] budget_check: must be error, warn or off, got 'maybe'"),
        ("[API]\nvalidate_responses = sometimes\n", r"\[API\] validate_responses in .*: expected true or false"),
        (
            "[POOL]\nreconnect_initial_delay = 5\nreconnect_max_delay = 1\n",
            r"\[POOL\] reconnect_initial_delay: must be > 0 and <= reconnect_max_delay",
        ),
        ("[REPLICA]\ncheck_interval = 0\n", r"\[REPLICA\] check_interval: must be > 0 seconds"),
        ("[REPLICA]\nmin_connections = -1\n", r"\[REPLICA\] min_connections: must be >= 0"),
        ("[GUNICORN]\nthreads = 0\n", r"WEB_THREADS / \[GUNICORN\] threads: must be >= 1"),
        ("[SERVER]\nthreads = 4\n", r"\[SERVER\] in .*: unknown section \(expected one of POSTGRES, POOL, API"),
        ("[POOL\ntimeout = 1\n", r"config.ini: cannot parse: File contains no section headers"),
        ("[POOL]\ntimeout\n", r"config.ini: cannot parse"),
    ],
)
def test_bad_ini_files_give_one_line_naming_the_section_and_key(tmp_path, ini, expected):
    path = tmp_path / "config.ini"
    path.write_text(ini)
    with pytest.raises(ConfigError, match=expected) as error:
        load_settings({"APP_CONFIG": str(path)})
    assert "\n" not in str(error.value)


def test_bad_ini_value_names_section_key_and_file(tmp_path):
    ini = tmp_path / "config.ini"
    ini.write_text("[POOL]\ntimeout = soon\n")
    with pytest.raises(ConfigError, match=r"\[POOL\] timeout in .*config.ini: expected a number, got 'soon'"):
        load_settings({"APP_CONFIG": str(ini)})
    ini.write_text("[POOL]\ntimeuot = 3\n")
    with pytest.raises(ConfigError, match=r"\[POOL\] timeuot in .*: unknown key \(did you mean timeout\?\)"):
        load_settings({"APP_CONFIG": str(ini)})


def test_example_config_is_valid_and_documents_every_key():
    from swagger_server.config import _INI_KEYS

    settings = load_settings({"APP_CONFIG": str(ROOT / "config.ini.example")})
    assert settings.source.endswith("config.ini.example")
    text = (ROOT / "config.ini.example").read_text()
    for section, keys in _INI_KEYS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} =" in text or f"\n; {key} =" in text, f"[{section}] {key} is not documented"


def test_copying_the_example_changes_nothing():
    from dataclasses import replace

    example = load_settings({"APP_CONFIG": str(ROOT / "config.ini.example")})
    assert (
        replace(example, source="defaults", notes=(), serving_notes=())
        == load_settings({"APP_CONFIG": EMPTY}).__class__()
    )
    assert names_a_server({"APP_CONFIG": str(ROOT / "config.ini.example")}) is None


def test_the_classic_tutorial_config_works_unchanged(tmp_path, caplog):
    ini = tmp_path / "config.ini"
    ini.write_text("[POSTGRES]\nURL = db.internal\nPORT = 6543\nUSER = bob\nPW = hunter2\nDB = shop\n")
    settings = load_settings({"APP_CONFIG": str(ini)})
    db = settings.database
    assert (db.host, db.port, db.user, db.password, db.dbname, db.url) == (
        "db.internal",
        6543,
        "bob",
        "hunter2",
        "shop",
        "",
    )
    notes = " ".join(settings.notes)  # said once at start by the entry point (config.log_notes)
    assert "read as password" in notes and "read as dbname" in notes and "read as host" in notes
    assert names_a_server({"APP_CONFIG": str(ini)}) == f"[POSTGRES] url in {ini}"
    ini.write_text("[POSTGRES]\nURL = postgresql://bob@db.internal/shop\n")  # a libpq URL is a URL
    assert load_settings({"APP_CONFIG": str(ini)}).database.url == "postgresql://bob@db.internal/shop"


def test_misspelled_environment_variables_get_a_hint():
    notes = load_settings({"APP_CONFIG": EMPTY, "DB_POOL_TIMOUT": "3", "WEB_CONCURENCY": "2"}).notes
    assert any("DB_POOL_TIMOUT" in n and "did you mean DB_POOL_TIMEOUT?" in n for n in notes), notes
    assert any("WEB_CONCURENCY" in n and "did you mean WEB_CONCURRENCY?" in n for n in notes), notes


def test_check_config_shows_the_database_actually_used():
    env = {"APP_CONFIG": EMPTY, "PATH": "/usr/bin", "DATABASE_URL": "postgresql://bob:pw@db.example.com:6543/prod"}
    result = subprocess.run(
        [sys.executable, "-m", "swagger_server", "check-config"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[POSTGRES] url = postgresql://bob@db.example.com:6543/prod   # DATABASE_URL (environment)" in lines
    assert "[POOL] timeout = 5.0   # default" in lines
    assert lines[-1] == "# the database used: postgresql://bob@db.example.com:6543/prod"
    assert "pw" not in result.stdout.replace("password", "")


def test_command_line_prints_one_line_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "swagger_server", "check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"APP_CONFIG": EMPTY, "DB_POOL_MAX_CONNECTIONS": "x", "PATH": "/usr/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DB_POOL_MAX_CONNECTIONS (environment): expected an integer, got 'x'"
    ]


def test_make_run_refuses_a_bad_value_before_starting_anything():
    env = {"APP_CONFIG": EMPTY, "PATH": "/usr/bin:/bin", "DB_POOL_TIMEOUT": "soon", "API_TOKENS": "demo-token-1"}
    result = subprocess.run(
        [sys.executable, "scripts/run.py"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DB_POOL_TIMEOUT (environment): expected a number, got 'soon'"
    ]
    assert "embedded PostgreSQL" not in result.stdout  # nothing was started, so nothing is left


def test_the_cli_finds_the_embedded_server_of_make_run(tmp_path, monkeypatch):
    from swagger_server.config import discovery as config

    monkeypatch.setattr(config, "DATA_DIR", tmp_path)
    monkeypatch.setattr(config, "EMBEDDED_URL_FILE", tmp_path / "database-url")
    env = {"APP_CONFIG": EMPTY}
    assert config.embedded_url(env) is None  # make run is not running
    (tmp_path / "database-url").write_text("postgresql://postgres@127.0.0.1:40123/store\n")
    (tmp_path / "postgres").mkdir()
    assert config.embedded_url(env) is None  # its server has stopped
    (tmp_path / "postgres" / "postmaster.pid").write_text("1\n")
    assert config.embedded_url(env) == "postgresql://postgres@127.0.0.1:40123/store"
    assert config.embedded_url({**env, "DATABASE_URL": "postgresql://elsewhere/store"}) is None


def _table():
    """(section, field) for every field of every section of the settings' table."""
    from dataclasses import fields

    from swagger_server.config.settings import SECTIONS

    return [(section, f) for section, cls in SECTIONS.items() for f in fields(cls)]


# A setting whose value another must accompany (checks.py's relations): what the test sets beside it.
COMPANIONS = {
    "DB_POOL_MIN_CONNECTIONS": {"DB_POOL_MAX_CONNECTIONS": "16"},
    "API_OIDC_ISSUER": {"API_OIDC_AUDIENCE": "store-api"},
}
INI_COMPANIONS = {
    ("POOL", "min_connections"): "max_connections = 16",
    ("POOL", "reconnect_initial_delay"): "reconnect_max_delay = 60",
    ("API", "oidc_issuer"): "oidc_audience = x",
}
JUNK = {"int": "lots", "float": "soon", "bool": "sometimes"}  # what each type's parser refuses


def _ids(x):
    return getattr(x, "name", x)


@pytest.mark.parametrize("section, f", [(s, f) for s, f in _table() if f.metadata["env"]], ids=_ids)
def test_every_environment_variable_changes_its_setting_and_is_validated(section, f):
    """Generated from the table: each environment variable, set to a value its rule admits, is the
    effective value (not the default) and says where it came from; set to one its rule refuses, or
    one its type cannot parse, it is refused in one line naming the variable and the ini key (and,
    for a secret, not the value)."""
    from swagger_server.config import _INI_KEYS
    from swagger_server.config.rules import rule_of
    from swagger_server.config.settings import SECTION_ATTR, label

    var, rule = f.metadata["env"], rule_of(f)
    _, parse, secret = _INI_KEYS[section][f.name]
    env = {"APP_CONFIG": EMPTY, **COMPANIONS.get(var, {})}
    settings = load_settings({**env, var: rule.admits})
    value = getattr(getattr(settings, SECTION_ATTR[section]), f.name)
    assert value == parse(rule.admits) and value != f.default, (var, value)
    assert dict(settings.origins)[f"{section}.{f.name}"] == f"{var} (environment)"
    refused = [rule.refuses] if rule.refuses is not None else []
    refused += [JUNK[f.type]] if f.type in JUNK else []
    assert refused or rule.message == "", f"{var}: neither its rule nor its type refuses a value: say so (anything())"
    for bad in refused:
        with pytest.raises(ConfigError) as error:
            load_settings({**env, var: bad})
        message = str(error.value)
        assert var in message and "\n" not in message, message
        if bad == rule.refuses:
            assert message.startswith(f"{label(section, f.name)}: "), message
        if secret and len(bad) > 2:
            assert bad not in message, message


@pytest.mark.parametrize("section, f", _table(), ids=_ids)
def test_every_ini_key_changes_its_setting_and_is_validated(tmp_path, section, f):
    """Generated from the table: each key of config.ini, as the environment test above."""
    from swagger_server.config import _INI_KEYS
    from swagger_server.config.rules import rule_of
    from swagger_server.config.settings import SECTION_ATTR

    rule, ini = rule_of(f), tmp_path / "config.ini"
    _, parse, _ = _INI_KEYS[section][f.name]
    extra = INI_COMPANIONS.get((section, f.name), "")
    ini.write_text(f"[{section}]\n{f.name} = {rule.admits}\n{extra}\n")
    settings = load_settings({"APP_CONFIG": str(ini)})
    value = getattr(getattr(settings, SECTION_ATTR[section]), f.name)
    assert value == parse(rule.admits) and value != f.default, (section, f.name, value)
    if (section, f.name) == ("POSTGRES", "url"):  # the tutorial's [POSTGRES] url holding a host name
        ini.write_text(f"[{section}]\n{f.name} = db.internal\n")
        assert load_settings({"APP_CONFIG": str(ini)}).database.host == "db.internal"
    elif rule.refuses is not None:
        ini.write_text(f"[{section}]\n{f.name} = {rule.refuses}\n{extra}\n")
        with pytest.raises(ConfigError, match=rf"\[{section}\] {f.name}: "):
            load_settings({"APP_CONFIG": str(ini)})


def test_the_table_is_written_once():
    """SECTIONS, SECTION_ATTR and ENV_OVERRIDES are derived from the dataclasses: every section of
    Settings is in them, every variable names a field of its section, and no variable is declared twice."""
    from dataclasses import fields

    from swagger_server.config.settings import ENV_OVERRIDES, SECTION_ATTR, SECTIONS, Settings

    sections = [f.name for f in fields(Settings) if hasattr(type(f.default), "SECTION")]
    assert sorted(SECTION_ATTR.values()) == sorted(sections)
    assert sorted(sections) == ["api", "database", "migrate", "pool", "replica", "server"]
    declared = [f.metadata["env"] for _, f in _table() if f.metadata["env"]]
    assert len(declared) == len(set(declared)) == len(ENV_OVERRIDES)
    for var, (section, key) in ENV_OVERRIDES.items():
        assert key in {f.name for f in fields(SECTIONS[section])}, (var, section, key)


def test_the_migrate_settings_are_read_and_their_defaults_are_db_upgrades():
    """[MIGRATE] was read and then left out of Settings: DB_MIGRATE_LOCK_TIMEOUT=7 left
    `settings.migrate.lock_timeout` at 0.5, and 999 passed validation. `db upgrade`'s timeouts default
    to the settings' own (they were written twice); tests/db/test_migrate.py proves the command uses them."""
    from swagger_server.config import MigrateSettings
    from swagger_server.db.migrate import Timeouts

    env = {"DB_MIGRATE_LOCK_TIMEOUT": "7", "DB_MIGRATE_STATEMENT_TIMEOUT": "30", "DB_MIGRATE_DEADLINE": "42"}
    mig = load_settings({"APP_CONFIG": EMPTY, **env}).migrate
    assert (mig.lock_timeout, mig.statement_timeout, mig.deadline) == (7.0, 30.0, 42.0)
    with pytest.raises(ConfigError, match="DB_MIGRATE_LOCK_TIMEOUT"):
        load_settings({"APP_CONFIG": EMPTY, "DB_MIGRATE_LOCK_TIMEOUT": "999"})
    defaults, timeouts = MigrateSettings(), Timeouts()
    assert (timeouts.lock_timeout, timeouts.statement_timeout, timeouts.deadline) == (
        defaults.lock_timeout,
        defaults.statement_timeout,
        defaults.deadline,
    )
