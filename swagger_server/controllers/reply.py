"""How controllers answer: JSON bodies with their status, and keyset pages.

Operations declare both application/json (success) and application/problem+json (errors), so Connexion
needs the content type named on every successful answer.
"""

from __future__ import annotations

from flask import Response

from swagger_server.errors import NotFound

_JSON = {"Content-Type": "application/json"}


def reply(body, status: int = 200, headers: dict | None = None):
    """A JSON answer: `(body, status, headers)` with the content type set."""
    return body, status, {**_JSON, **headers} if headers else _JSON


def no_content() -> Response:
    """204 with no body and no Content-Type."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def page(rows: list[dict], limit: int) -> dict:
    """`{"items": rows[:limit], "next_cursor": id of the last item if more rows exist, else None}`.

    Callers fetch limit + 1 rows; the extra one only says that another page exists.
    """
    more = len(rows) > limit
    items = rows[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


def found(row: dict | None, what: str, key: int) -> dict:
    """`row`, or NotFound ("customer 42 not found") when the query found nothing."""
    if row is None:
        raise NotFound(f"{what} {key} not found")
    return row
