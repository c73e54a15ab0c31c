"""Small text helpers shared by every layer (it imports nothing of the service)."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (libpq's run to several), or its type's name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
