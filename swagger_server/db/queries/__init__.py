"""All SQL, one module per table or aggregate."""

from __future__ import annotations

from dataclasses import dataclass


def like_escape(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '\\': its own %, _ and backslashes match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class WriteCondition:
    """A PATCH's or DELETE's conditions (controllers/conditional.py reads them from If-Match and
    If-None-Match), for its statement: `allowed`, the versions If-Match names
    (None: any); `refused`, those If-None-Match names; `none`: If-None-Match `*` (no current version
    may be written: the write is not even tried)."""

    allowed: list[int] | None = None
    refused: tuple[int, ...] | list[int] = ()
    none: bool = False

    @property
    def header(self) -> str:
        return "If-None-Match" if self.none or self.refused else "If-Match"


ANY = WriteCondition()
