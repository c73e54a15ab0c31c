"""Conditional requests (RFC 9110 §13): ETags from row versions, If-None-Match and If-Match.

A resource's ETag is its row's version, a counter the database adds 1 to on every change of the row
(schema 003_row_versions.sql): strong, `"7"`. A page of a list has a weak ETag, a digest of the ids
and versions on it and its cursor: `W/"3f9c…"`.

- `If-None-Match` on a GET: `304 Not Modified` (the ETag, no body) when any tag matches by the weak
  comparison, or for `*`; otherwise the full answer.
- `If-Match` on PATCH and DELETE: the versions it names go into the write's own WHERE clause, so the
  check and the write are one statement and nothing can come between them; when no row is written
  the resource has changed (`412`, with its current ETag) or is gone (`404`). `*` matches any current
  version. With `[API] require_if_match` a PATCH or DELETE without it is `428`.
- On a read replica, a row older than a version the client sends in If-None-Match means the replica
  is behind what the client has seen: the read runs again on the primary (ReplicaBehind), so a stale
  replica never answers 200 with an older row to a client that holds a newer one (and never 304).
"""

from __future__ import annotations

import hashlib
import re

from flask import Response, current_app, request

from swagger_server.controllers.reply import reply
from swagger_server.db.replica import ReplicaBehind
from swagger_server.errors import ApiError, NotFound
from swagger_server.request_scope import request_db

# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, in a comma-separated list.
_TAG = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(?:,|$)')


class PreconditionFailed(ApiError):
    status, title, kind = 412, "Precondition Failed", "precondition-failed"


class PreconditionRequired(ApiError):
    status, title, kind = 428, "Precondition Required", "precondition-required"


def etag(version: int) -> str:
    return f'"{version}"'


def parse_tags(value: str, header: str) -> tuple[bool, list[tuple[bool, str]]]:
    """(`*`, [(weak, opaque tag)]) of an If-Match or If-None-Match value; 400 naming the header
    when it is neither `*` nor a list of entity tags. The spec states the same grammar as a pattern
    (components/parameters/IfMatch), which the validator applies first; this is the one reading of it."""
    if value.strip() == "*":
        return True, []
    tags, position = [], 0
    while position < len(value):
        match = _TAG.match(value, position)
        if match is None or match.end() == position:
            raise ApiError(f'{header} must be * or a list of entity tags like "7"', field=header)
        tags.append((bool(match.group(1)), match.group(2)))
        position = match.end()
    if not tags:
        raise ApiError(f'{header} must be * or a list of entity tags like "7"', field=header)
    return False, tags


def _versions(tags) -> list[int]:
    return [int(opaque) for _, opaque in tags if opaque.isdigit() and len(opaque) <= 18]


def answer(row: dict, status: int = 200, headers: dict | None = None):
    """The resource (a row with its `version`) with its ETag, or 304 for a GET whose If-None-Match
    matches it."""
    version = row.pop("version")
    tag = etag(version)
    if request.method == "GET":
        condition = request.headers.get("If-None-Match")
        if condition is not None:
            star, tags = parse_tags(condition, "If-None-Match")
            if star or any(opaque == str(version) for _, opaque in tags):
                return not_modified(tag)
            if request_db().role == "replica" and any(seen > version for seen in _versions(tags)):
                raise ReplicaBehind(f"replica row version {version}, client has seen {max(_versions(tags))}")
    return reply(row, status, {"ETag": tag, **(headers or {})})


def answer_page(page: dict, status: int = 200):
    """A page of rows (each with its `version`) with a weak ETag over ids, versions and the cursor;
    304 when If-None-Match matches it (weak comparison)."""
    digest = hashlib.sha256(repr(page["next_cursor"]).encode())
    for item in page["items"]:
        digest.update(b"%d:%d;" % (item["id"], item.pop("version")))
    tag = f'W/"{digest.hexdigest()[:24]}"'
    condition = request.headers.get("If-None-Match")
    if condition is not None:
        star, tags = parse_tags(condition, "If-None-Match")
        if star or any(opaque == tag[3:-1] for _, opaque in tags):
            return not_modified(tag)
    return reply(page, status, {"ETag": tag})


def not_modified(tag: str) -> Response:
    response = Response(status=304, headers={"ETag": tag})
    del response.headers["Content-Type"]
    return response


def if_match() -> list[int] | None:
    """The versions a PATCH or DELETE may change, from If-Match: None when any version will do (no
    header, or `*`), else the strong tags' versions (a weak tag never matches: RFC 9110 §13.1.1).
    428 when `[API] require_if_match` is on and the header is missing."""
    condition = request.headers.get("If-Match")
    if condition is None:
        if current_app.config["SETTINGS"].api.require_if_match:
            raise PreconditionRequired(
                "this server requires If-Match on changes: send the ETag of the version you changed",
                field="If-Match",
            )
        return None
    star, tags = parse_tags(condition, "If-Match")
    return None if star else _versions([(weak, opaque) for weak, opaque in tags if not weak])


def not_written(current: int | None, what: str, key: int):
    """A conditional write that wrote nothing: 404 if the row is gone, else 412 with its ETag."""
    if current is None:
        raise NotFound(f"{what} {key} not found")
    raise PreconditionFailed(
        f"{what} {key} has changed since the version If-Match names; it is now {etag(current)}",
        headers={"ETag": etag(current)},
        field="If-Match",
    )
