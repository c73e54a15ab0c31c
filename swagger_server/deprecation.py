"""Deprecation headers from the spec: an operation marked `deprecated: true` answers with RFC 9745's
`Deprecation` (when it was deprecated), RFC 8594's `Sunset` (when it goes) and a `Link` to its notes.

The spec says it once, per operation, and every answer of that operation carries it (errors too: a
client that only ever sees a 404 must still learn its call is going away):

    deprecated: true
    x-deprecated-at: 2026-12-01        # required: the day it was deprecated (Deprecation: @<unix seconds>)
    x-sunset: 2027-06-01               # the day it stops being served (Sunset: <HTTP-date>)
    x-deprecation-notes: /docs/UPGRADING.md#...   # what to use instead (Link: <...>; rel="deprecation")

Read once when the app is built; a malformed date stops start-up, naming the operation.
"""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime


class DeprecationSpecError(ValueError):
    """A deprecated operation lacks x-deprecated-at, or it or x-sunset is not a date."""


def _day(operation_id: str, key: str, value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, dt.date):
        raise DeprecationSpecError(f"{operation_id}: {key} must be a date like 2027-06-01, got {value!r}")
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)


def headers_by_operation(spec_paths: dict) -> dict[str, list[tuple[bytes, bytes]]]:
    """operationId -> the raw headers every answer of that deprecated operation carries."""
    found: dict[str, list[tuple[bytes, bytes]]] = {}
    for item in spec_paths.values():
        for operation in item.values():
            if not isinstance(operation, dict) or not operation.get("deprecated"):
                continue
            name = operation["operationId"]
            # RFC 9745's value is a structured-field Date (an earlier draft's `true` is not allowed).
            when = _day(name, "x-deprecated-at", operation.get("x-deprecated-at"))
            headers = [(b"deprecation", f"@{int(when.timestamp())}".encode())]
            if "x-sunset" in operation:
                when = _day(name, "x-sunset", operation["x-sunset"])
                headers.append((b"sunset", format_datetime(when, usegmt=True).encode()))
            notes = operation.get("x-deprecation-notes")
            if notes:
                headers.append((b"link", f'<{notes}>; rel="deprecation"; type="text/html"'.encode()))
            found[name] = headers
    return found
