"""The text rule's Unicode version against the database's, once per process (text.py).

The API's rule (which code points are refused, what NFC is) comes from one pinned set of tables,
`unicodedata2` (16.0.0); the database's CHECK (schema 021) is generated from the same tables, except
`IS NFC NORMALIZED`, which is the server's own. Three cases, said in the log at start-up:

- the same version (PostgreSQL 18: 16.0): one rule;
- the server's is newer: still one rule. The API refuses code points its tables do not assign, and
  text made of assigned code points in NFC stays in NFC in every later version (Unicode's
  normalisation stability policy);
- the server's is older (PostgreSQL 17: 15.1), or it cannot say (before 17, no `unicode_version()`):
  its NFC check may refuse text with a code point assigned after its version, which the API admitted.
  Such a write is answered 400 naming the field (errors.py, by the column's own constraint), never a
  409 naming none, and the log says so at start-up with what to do (upgrade PostgreSQL).
"""

from __future__ import annotations

import logging

from swagger_server.text import UNICODE_VERSION

logger = logging.getLogger(__name__)


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def database_version(conn) -> str | None:
    """The server's Unicode version (`unicode_version()`, PostgreSQL 17 and later), or None."""
    if conn.server_version < 170000:
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT unicode_version()")
        return cur.fetchone()[0]


def verdict(theirs: str | None, ours: str = UNICODE_VERSION) -> tuple[int, str]:
    """(log level, line) for a database whose Unicode is `theirs` (None: it cannot say)."""
    if theirs is not None and _parts(theirs) >= _parts(ours)[: len(_parts(theirs))]:
        return logging.INFO, f"text rule: Unicode {ours}; the database's is {theirs}: one rule"
    return logging.WARNING, (
        f"text rule: Unicode {ours}, the database's is {theirs or 'older than PostgreSQL 17 (it cannot say)'}:"
        " text with a code point it does not know may be refused by its NFC check (answered 400 naming the"
        " field); upgrade PostgreSQL to 18 or later for one rule"
    )


def compare(conn) -> str | None:
    """Log how the server's Unicode stands to the API's; return the server's version (None: unknown)."""
    theirs = database_version(conn)
    level, line = verdict(theirs)
    logger.log(level, "%s", line)
    return theirs
