"""`db upgrade` refuses what docs/UPGRADING.md forbids, before it applies anything (db/schema_rules.py):
each rule the guide names, in a file after a good pending one, against a real database; a waiver with
its reason lets the statement through, one without does not; the words in a string or a function body
are not statements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swagger_server.db.migrate import MigrationError, upgrade
from tests.support.database import admin_connect, query, schema_dir

ROOT = Path(__file__).resolve().parents[2]
GOOD = "-- a harmless expand step, pending with the bad one\nALTER TABLE customers ADD COLUMN nickname text;\n"

# (rule, the statement, on the file's second line)
FORBIDDEN = [
    ("renaming-column", "ALTER TABLE customers RENAME COLUMN name TO full_name;"),
    ("renaming-table", "ALTER TABLE customers RENAME TO clients;"),
    ("ban-drop-column", "ALTER TABLE orders DROP COLUMN total_cents;"),
    ("ban-drop-table", "DROP TABLE idempotency_keys;"),
    ("require-concurrent-index-creation", "CREATE INDEX orders_total_idx\n    ON orders (total_cents);"),
    ("adding-field-with-default", "ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();"),
    ("adding-required-field", "ALTER TABLE orders ADD COLUMN note text NOT NULL;"),
    (
        "adding-not-nullable-field",
        "ALTER TABLE customers ALTER COLUMN name DROP NOT NULL, ALTER COLUMN name SET NOT NULL;",
    ),
    ("constraint-missing-not-valid", "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total_cents > 0);"),
    ("disallowed-unique-constraint", "ALTER TABLE customers ADD CONSTRAINT one_name UNIQUE (name);"),
    ("changing-column-type", "ALTER TABLE orders ALTER COLUMN total_cents TYPE numeric;"),
]


def applied(url: str) -> set[str]:
    conn = admin_connect(url)
    try:
        return {r[0] for r in query(conn, "SELECT version FROM schema_migrations")}
    finally:
        conn.close()


@pytest.fixture
def upgraded(new_database):
    url = new_database("store_schema_rules")
    upgrade(url)
    return url


@pytest.mark.parametrize("rule, statement", FORBIDDEN, ids=[r for r, _ in FORBIDDEN])
def test_db_upgrade_refuses_what_the_guide_forbids_before_applying_anything(upgraded, tmp_path, rule, statement):
    folder = schema_dir(tmp_path, extra={"900_good.sql": GOOD, "901_bad.sql": f"-- the change\n{statement}\n"})
    before = applied(upgraded)
    with pytest.raises(MigrationError) as refused:
        upgrade(upgraded, schema_dir=folder)
    message = str(refused.value)
    assert message.startswith("refused before applying anything: 901_bad.sql line 2: " + rule + ":"), message
    assert applied(upgraded) == before  # not even 900, which was fine
    # Waived with its reason, it applies (the one rule named: anything else it breaks still counts).
    waived = f"-- the change\n-- why: the test says so\n-- squawk-ignore {rule}\n{statement}\n"
    (folder / "901_bad.sql").write_text(waived)
    try:
        upgrade(upgraded, schema_dir=folder)
    except MigrationError as exc:  # refused by PostgreSQL itself (e.g. NOT NULL on a table with rows), not by us
        assert "refused before applying anything" not in str(exc), exc
    assert "900_good.sql" in applied(upgraded)


def test_a_waiver_without_its_reason_waives_nothing(upgraded, tmp_path):
    text = "-- squawk-ignore renaming-column\nALTER TABLE customers RENAME COLUMN name TO full_name;\n"
    folder = schema_dir(tmp_path, extra={"901_bad.sql": text})
    with pytest.raises(MigrationError, match="901_bad.sql line 2: renaming-column: .* it waives nothing"):
        upgrade(upgraded, schema_dir=folder)


def test_words_in_strings_comments_and_function_bodies_are_not_statements(upgraded, tmp_path):
    text = (
        "-- ALTER TABLE customers RENAME COLUMN name TO full_name;\n"
        "COMMENT ON TABLE customers IS 'ALTER TABLE customers DROP COLUMN name; CREATE INDEX x ON orders (id)';\n"
        "CREATE FUNCTION harmless() RETURNS void LANGUAGE plpgsql AS $$\n"
        "BEGIN PERFORM 'ALTER TABLE orders ALTER COLUMN total_cents TYPE numeric'; END $$;\n"
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n"
        "CREATE INDEX notes_body_idx ON notes (body);  -- a table this file creates: nobody to block\n"
        "ALTER TABLE notes ADD COLUMN made timestamptz NOT NULL DEFAULT now();\n"
    )
    folder = schema_dir(tmp_path, extra={"901_fine.sql": text})
    assert upgrade(upgraded, schema_dir=folder) == ["901_fine.sql"]


def test_the_command_line_says_why_in_one_message_and_fails(upgraded, tmp_path):
    """As an operator runs it: exit code non-zero, the file, the line and the rule on stderr."""
    folder = schema_dir(tmp_path, extra={"901_bad.sql": "\n\nCREATE INDEX orders_total_idx ON orders (total_cents);\n"})
    script = (
        "import sys; from pathlib import Path; from swagger_server.db.migrate import upgrade, MigrationError\n"
        "try: upgrade(sys.argv[1], schema_dir=Path(sys.argv[2]))\n"
        "except MigrationError as exc: print(exc, file=sys.stderr); sys.exit(1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, upgraded, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "901_bad.sql line 3: require-concurrent-index-creation" in done.stderr, done.stderr
