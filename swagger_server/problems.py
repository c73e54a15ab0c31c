"""Every problem+json body the service sends is rendered here (RFC 9457): `type`, `title`, `status`,
`detail`, and what the cause adds (`field`). One document, in three forms: a Connexion response (the
error handlers of errors.py), raw ASGI headers and body (the layers that answer before Connexion, and
the HTTP protocol's refusals), and an answer sent on an ASGI `send`.

A title is the status's reason phrase, by http.HTTPStatus; RFC 9110 renamed three whose Python 3.11
phrase is the old one. A `type` ends in a kind (PROBLEM_KINDS): the status's own unless the cause names
a finer one (a statement timeout, an overload), and the bounded label of store_api_problems_total.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from connexion.lifecycle import ConnexionResponse

PROBLEM = "application/problem+json"
PROBLEM_BASE = "/api/problems/"
# Every kind of problem the service answers with (the end of a problem's `type`): the bounded `kind`
# label of store_api_problems_total, so that a dashboard tells a statement timeout from an overload and
# a rate limit from a concurrency limit. tests/observability/test_problem_kinds.py fails on a kind the
# code uses that this set lacks; any other (none should exist) is counted as "other".
PROBLEM_KINDS = frozenset(
    {
        "bad-request",
        "conflict",
        "conflict-retry",
        "database-unavailable",
        "error",
        "forbidden",
        "headers-too-large",
        "insufficient-stock",
        "internal",
        "length-required",
        "method-not-allowed",
        "not-acceptable",
        "not-found",
        "not-implemented",
        "overloaded",
        "payload-too-large",
        "pool-exhausted",
        "precondition-failed",
        "precondition-required",
        "rate-limited",
        "redirect",
        "request-timeout",
        "schema-behind",
        "shutting-down",
        "statement-timeout",
        "too-many-concurrent",
        "unauthorized",
        "unavailable",
        "unprocessable",
        "unsupported-media-type",
        "uri-too-long",
    }
)
# The kind of a problem whose cause names none finer: by its status.
KIND_OF_STATUS = {
    302: "redirect",
    308: "redirect",
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    408: "request-timeout",
    409: "conflict",
    411: "length-required",
    412: "precondition-failed",
    413: "payload-too-large",
    414: "uri-too-long",
    415: "unsupported-media-type",
    422: "unprocessable",
    428: "precondition-required",
    429: "rate-limited",
    431: "headers-too-large",
    500: "internal",
    501: "not-implemented",
    503: "unavailable",
}
_RFC_9110 = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def title(status: int) -> str:
    """The status's reason phrase (RFC 9110's names)."""
    if status in _RFC_9110:
        return _RFC_9110[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def kind_of(status: int) -> str:
    return KIND_OF_STATUS.get(status, "error")


def document(status: int, detail: str, kind: str | None = None, **extra) -> bytes:
    """The problem as compact JSON; `extra` members (say `field`) follow the four, None ones left out."""
    body = {"type": PROBLEM_BASE + (kind or kind_of(status)), "title": title(status), "status": status}
    body["detail"] = detail
    body.update((key, value) for key, value in extra.items() if value is not None)
    return json.dumps(body, separators=(",", ":")).encode()


def response(status: int, detail: str, kind: str | None = None, headers: dict | None = None, **extra):
    """The problem as Connexion's response (an error handler's answer)."""
    return ConnexionResponse(
        status_code=status,
        content_type=PROBLEM,
        headers=headers or {},
        body=document(status, detail, kind, **extra).decode(),
    )


def asgi(status: int, detail: str, headers: dict | None = None, kind: str | None = None, **extra) -> tuple[list, bytes]:
    """The problem as raw ASGI headers and body (a layer that answers before Connexion does)."""
    body = document(status, detail, kind, **extra)
    raw = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return raw, body


async def send(send, status: int, detail: str, headers: dict | None = None, kind: str | None = None, **extra) -> None:
    """Answer with the problem on a raw ASGI `send`."""
    raw, body = asgi(status, detail, headers, kind, **extra)
    await answer(send, status, raw, body)


async def answer(send, status: int, headers: list, body: bytes) -> None:
    """An answer already rendered (a layer's refusal made once), on a raw ASGI `send`."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
