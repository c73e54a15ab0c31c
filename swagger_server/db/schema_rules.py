"""What `db upgrade` refuses to apply: the statements docs/UPGRADING.md ("Writing a schema file")
forbids, found before any file runs, each named by file, line and rule.

The suite lints every file with squawk too (tests/db/test_migrate.py), but a deploy runs `db upgrade`
where no lint binary is (the image, a CI job, an operator's shell): the runner knows the rules itself.
They are the guide's, under squawk's names, so that one waiver serves both: above the statement,

    -- why: <the reason, e.g. the contract step: release 1.1 stopped reading the column>
    -- squawk-ignore ban-drop-column

A waiver without its `-- why:` line waives nothing. The statements are read by PostgreSQL's own
parser (pglast, libpg_query), not by patterns: a comment, a string or a function body holding these
words is not a finding, and a statement spread over lines is one.

Rules (each checked by tests/db/test_schema_rules.py):
- renaming-column, renaming-table: the running release still names the old one (expand/contract).
- ban-drop-column, ban-drop-table: only as the contract step, waived with the release that stopped
  using it.
- require-concurrent-index-creation: `CREATE INDEX` without `CONCURRENTLY` blocks writes for the
  whole build (not on a table the same file creates).
- adding-field-with-default: a default that is a function call other than now() (a volatile one
  rewrites the table under its lock; an unknown one might).
- adding-required-field: `ADD COLUMN ... NOT NULL` without a default (fails, or rewrites).
- adding-not-nullable-field: `SET NOT NULL` scans the table under ACCESS EXCLUSIVE, unless a valid
  `CHECK (c IS NOT NULL)` exists: add it `NOT VALID`, validate it in a later file, then waive this.
- constraint-missing-not-valid: a CHECK or FOREIGN KEY added without `NOT VALID` scans the table
  under its lock; disallowed-unique-constraint: a UNIQUE or PRIMARY KEY constraint builds its index
  under it (build the index `CONCURRENTLY`, then `ADD CONSTRAINT ... USING INDEX`).
- changing-column-type: `ALTER COLUMN ... TYPE` rewrites the table under its lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType

# Functions a column default may call without rewriting the table (STABLE, evaluated once).
_STABLE_DEFAULTS = frozenset({"now", "transaction_timestamp", "statement_timestamp"})
_WAIVER = re.compile(r"^\s*--\s*squawk-ignore\s+(.+)$", re.MULTILINE)
_REASON = re.compile(r"^\s*--\s*why:\s*\S", re.MULTILINE)


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    why: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.rule}: {self.why}"


def check(name: str, text: str) -> list[Finding]:
    """The findings in one schema file (not waived). A file PostgreSQL's parser refuses is one finding."""
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        return [Finding(name, _line(text, getattr(exc, "location", 0) or 0), "syntax", str(exc))]
    found: list[Finding] = []
    created: set[str] = set()  # tables this file creates: changing an empty table blocks nobody
    end = 0
    for raw in statements:
        start = raw.stmt_location
        waived, reason = _waivers(_between(text, end, start))
        end = start + (raw.stmt_len or len(text.encode()) - start)
        line = _line(text, start)
        for rule, why in _rules(raw.stmt, created):
            if rule in waived and reason:
                continue
            if rule in waived:
                why += " (the waiver above it has no `-- why:` line saying why: it waives nothing)"
            found.append(Finding(name, line, rule, why))
        if isinstance(raw.stmt, ast.CreateStmt):
            created.add(raw.stmt.relation.relname)
    return found


def _rules(stmt, created: set[str]):
    """(rule, why) for each thing the guide forbids in one statement."""
    if isinstance(stmt, ast.RenameStmt):
        if stmt.renameType == ObjectType.OBJECT_COLUMN:
            yield "renaming-column", "a rename breaks the release still running: add the new column, switch, drop later"
        elif stmt.renameType == ObjectType.OBJECT_TABLE:
            yield "renaming-table", "a rename breaks the release still running: expand and contract instead"
    elif isinstance(stmt, ast.DropStmt) and stmt.removeType == ObjectType.OBJECT_TABLE:
        yield "ban-drop-table", "a drop is the contract step only: waive it naming the release that stopped using it"
    elif isinstance(stmt, ast.IndexStmt) and not stmt.concurrent and stmt.relation.relname not in created:
        yield (
            "require-concurrent-index-creation",
            "CREATE INDEX blocks writes for the whole build: CREATE INDEX CONCURRENTLY, in a no-transaction file",
        )
    elif isinstance(stmt, ast.AlterTableStmt) and stmt.relation.relname not in created:
        for cmd in stmt.cmds or ():
            yield from _alter(cmd)


def _alter(cmd):
    kind = cmd.subtype
    if kind == AlterTableType.AT_DropColumn:
        yield "ban-drop-column", "a drop is the contract step only: waive it naming the release that stopped using it"
    elif kind == AlterTableType.AT_AlterColumnType:
        yield "changing-column-type", "a type change rewrites the table under its lock: add a column, backfill, switch"
    elif kind == AlterTableType.AT_SetNotNull:
        yield (
            "adding-not-nullable-field",
            "SET NOT NULL scans the table under its lock: CHECK (c IS NOT NULL) NOT VALID, validate it in a later"
            " file, then SET NOT NULL waived with that reason",
        )
    elif kind == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        constraints = cmd.def_.constraints or ()
        default = next((c for c in constraints if c.contype == ConstrType.CONSTR_DEFAULT), None)
        if default is not None and _calls_other_than_stable(default.raw_expr):
            yield (
                "adding-field-with-default",
                "a default that calls a function may rewrite the table under its lock: a constant, or"
                " add the column nullable and backfill in batches",
            )
        if default is None and any(c.contype == ConstrType.CONSTR_NOTNULL for c in constraints):
            yield (
                "adding-required-field",
                "NOT NULL without a default fails on a table with rows: give a constant default",
            )
    elif kind == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        constraint = cmd.def_
        if (
            constraint.contype in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN)
            and not constraint.skip_validation
        ):
            yield (
                "constraint-missing-not-valid",
                "a constraint scans the table under its lock: add it NOT VALID, validate it in a later file",
            )
        elif constraint.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not constraint.indexname:
            yield (
                "disallowed-unique-constraint",
                "its index is built under the table's lock: CREATE UNIQUE INDEX CONCURRENTLY, then USING INDEX",
            )


def _calls_other_than_stable(node) -> bool:
    for call in _walk(node):
        if isinstance(call, ast.FuncCall):
            name = call.funcname[-1].sval.lower()
            if name not in _STABLE_DEFAULTS:
                return True
    return False


def _walk(node):
    if isinstance(node, ast.Node):
        yield node
        for field in node:  # a Node iterates over its attribute names
            yield from _walk(getattr(node, field))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)


def _between(text: str, start: int, end: int) -> str:
    """The text between two byte offsets (pglast's locations count bytes)."""
    return text.encode()[start:end].decode(errors="replace")


def _line(text: str, offset: int) -> int:
    return text.encode()[:offset].count(b"\n") + 1


def _waivers(before: str) -> tuple[set[str], bool]:
    """The rules waived in the comments just above a statement, and whether a reason is given."""
    rules = {r.strip() for match in _WAIVER.findall(before) for r in re.split(r"[,\s]+", match) if r.strip()}
    return rules, bool(_REASON.search(before))
