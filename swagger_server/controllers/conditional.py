"""Conditional requests (RFC 9110 §13): ETags from row versions, If-Match and If-None-Match.

A resource's ETag is its row's version, a counter the database adds 1 to on every change of the row
(schema 003_row_versions.sql): strong, `"7"`. A page of a list has a weak ETag, a digest of the ids
and versions on it and its cursor: `W/"3f9c…"`. The dashboard's report has a weak ETag naming its
range, `top` and snapshot (`as_of`: controllers/dashboard.py).

Every operation with a representation evaluates the conditions in RFC 9110 §13.2.2's order:
1. `If-Match`: `*` is true when the target has a current representation; a list is true when one of
   its tags equals the current ETag by the strong comparison (both strong, opaque tags equal
   character for character: `"01"` is not `"1"`). False: `412`, whatever the method.
2. `If-Unmodified-Since`, 4. `If-Modified-Since`, 5. `If-Range`: ignored; no representation here has a
   modification date, and no request a Range (RFC 9110 §13.1.3, §13.1.4, §13.1.5).
3. `If-None-Match`: `*` is false when the target has a current representation; a list is false when one
   of its tags equals the current ETag by the weak comparison. False: `304` for GET and HEAD (the ETag,
   no body), `412` for any other method.

Writes (PATCH, DELETE) put both conditions into their own statement (`WriteCondition`): the versions
If-Match allows and those If-None-Match refuses go into the UPDATE's or DELETE's WHERE clause, so the
check and the write are one statement and nothing can come between them; when no row is written the
resource has changed (`412`, with its current ETag) or is gone (`404`: a precondition is ignored when
the answer without it would not be 2xx, RFC 9110 §13.2.1). With `[API] require_if_match` a PATCH or
DELETE without If-Match is `428`. A create (POST) evaluates them against the collection it adds to.

Tags are read by the grammar only (`parse_tags`); a tag names a version only in its canonical form,
ASCII digits without a leading zero (`"¹"`, `"01"`, `"1.0"` name none and so never match).

On a read replica, a row older than a version the client sends (in either header) means the replica
is behind what the client has seen: the read runs again on the primary (ReplicaBehind), so a stale
replica never answers 200, 304 or 412 from an older row to a client that holds a newer one.
"""

from __future__ import annotations

import hashlib
import re

from flask import Response, request

from swagger_server import state as app_state
from swagger_server.controllers.reply import reply
from swagger_server.db.queries import ANY, WriteCondition
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


_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits, canonical: no leading zero, within bigint
READS = frozenset(("GET", "HEAD"))


def _versions(tags) -> list[int]:
    """The versions the tags name: opaque tags that are a version's canonical form."""
    return [int(opaque) for _, opaque in tags if _VERSION.fullmatch(opaque)]


def _strong_match(tags, current: str) -> bool:
    """RFC 9110 §8.8.3.2: both strong, opaque tags equal."""
    return not current.startswith("W/") and any(not weak and f'"{opaque}"' == current for weak, opaque in tags)


def _weak_match(tags, current: str) -> bool:
    opaque = current[3:-1] if current.startswith("W/") else current[1:-1]
    return any(tag == opaque for _, tag in tags)


def evaluate(current, exists: bool = True):
    """RFC 9110 §13.2.2 for a read or a create: None to go on, a 304 to send, or PreconditionFailed.
    `current` is the current representation's ETag, None when it has none, or a callable giving it
    (called only when a tag list must be compared); `exists`: whether the target has a current
    representation at all (a POST to a collection without a GET has none)."""
    headers = request.headers
    condition = headers.get("If-Match")
    if condition is not None:
        star, tags = parse_tags(condition, "If-Match")
        if star:
            holds = exists
        else:
            tag = current() if callable(current) else current
            holds = exists and tag is not None and _strong_match(tags, tag)
        if not holds:
            raise PreconditionFailed("If-Match names no current version of this resource", field="If-Match")
    condition = headers.get("If-None-Match")
    if condition is not None:
        star, tags = parse_tags(condition, "If-None-Match")
        if star:
            matched, tag = exists, None
        else:
            tag = current() if callable(current) else current
            matched = exists and tag is not None and _weak_match(tags, tag)
        if matched:
            if request.method in READS:
                if tag is None:
                    tag = current() if callable(current) else current
                return not_modified(tag)
            raise PreconditionFailed(
                "If-None-Match matches the current version of this resource", field="If-None-Match"
            )
    return None


def answer(row: dict, status: int = 200, headers: dict | None = None):
    """The resource (a row with its `version`) with its ETag; for GET and HEAD, the conditions
    evaluated against it first (304, 412)."""
    version = row.pop("version")
    tag = etag(version)
    if request.method in READS:
        if request_db().role == "replica":
            seen = [
                v
                for name in ("If-None-Match", "If-Match")
                if (value := request.headers.get(name)) is not None
                for v in _versions(parse_tags(value, name)[1])
            ]
            if seen and max(seen) > version:
                raise ReplicaBehind(f"replica row version {version}, client has seen {max(seen)}")
        early = evaluate(tag)
        if early is not None:
            return early
    return reply(row, status, {"ETag": tag, **(headers or {})})


def page_etag(page: dict) -> str:
    """A page's weak ETag (and each item's version taken out of it)."""
    digest = hashlib.sha256(repr(page["next_cursor"]).encode())
    for item in page["items"]:
        digest.update(b"%d:%d;" % (item["id"], item.pop("version")))
    return f'W/"{digest.hexdigest()[:24]}"'


def answer_page(page: dict, status: int = 200):
    """A page of rows (each with its `version`) with a weak ETag over ids, versions and the cursor;
    the conditions evaluated against it first (304, 412)."""
    tag = page_etag(page)
    early = evaluate(tag)
    if early is not None:
        return early
    return reply(page, status, {"ETag": tag})


def not_modified(tag: str | None) -> Response:
    response = Response(status=304, headers={"ETag": tag} if tag else {})
    del response.headers["Content-Type"]
    return response


def write_condition() -> WriteCondition:
    """The conditions of a PATCH or DELETE (see WriteCondition). 428 when `[API] require_if_match`
    is on and If-Match is missing."""
    headers = request.headers
    condition = headers.get("If-Match")
    allowed = None
    if condition is None:
        if app_state.current().settings.api.require_if_match:
            raise PreconditionRequired(
                "this server requires If-Match on changes: send the ETag of the version you changed",
                field="If-Match",
            )
    else:
        star, tags = parse_tags(condition, "If-Match")
        allowed = None if star else _versions([(weak, opaque) for weak, opaque in tags if not weak])
    condition = headers.get("If-None-Match")
    if condition is None:
        return ANY if allowed is None else WriteCondition(allowed)
    star, tags = parse_tags(condition, "If-None-Match")
    return WriteCondition(allowed, _versions(tags), star)


def not_written(current: int | None, what: str, key: int, condition: WriteCondition = ANY):
    """A conditional write that wrote nothing: 404 if the row is gone, else 412 with its ETag."""
    if current is None:
        raise NotFound(f"{what} {key} not found")
    raise PreconditionFailed(
        f"{what} {key} is now {etag(current)}: {condition.header} does not allow changing that version",
        headers={"ETag": etag(current)},
        field=condition.header,
    )
