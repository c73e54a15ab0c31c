"""The request gate: one reading of every request, decided once, before anything else reads it.

Several components read the same request after this layer: Connexion's security (Authorization),
its validators (Content-Type, the body, parameters), Flask and werkzeug (the WSGI environ built from
the same headers), our handlers (Idempotency-Key, X-Consistency-Token). Each has its own idea of a
repeated header (first, last, or joined with commas), of a media type's case, and of a header spelt
with `_` (WSGI folds `Idempotency_Key` into `Idempotency-Key`; Starlette does not). Where two readers
could disagree, this layer decides once and hands every reader the same, canonical request:

- a header that must appear once (SINGLE) and appears twice is a `400` problem naming it, and so is
  an HTTP/1.1 request without exactly one `Host`;
- a path or query that is not UTF-8 once percent-decoded is `400` (the readers would each replace the
  bad bytes with U+FFFD, and two different requests would read as one);
- a header whose name holds `_` is dropped, as nginx does by default: no reader sees it;
- `Content-Type` is parsed by RFC 9110's grammar (case-insensitive type and subtype, parameters):
  malformed is `400`; a body in anything but `application/json` (with `charset=utf-8` or none) is
  `415`; what reaches the readers is exactly `content-type: application/json`;
- the body is read here, whole, before any layer that could hold a handler thread or a database
  connection: at most `max_bytes` (`413` otherwise, from `Content-Length` before a byte is read, or
  as a chunked body passes the limit) within `body_timeout` seconds (`408` otherwise). What goes on
  is one message with a `Content-Length` that matches it (no `Transfer-Encoding`);
- answers the service renders itself (redirects of `/`, `/api` and `/api/ui` to the UI, a trailing
  slash) are problem+json with a path-only `Location`, never one built from the client's `Host`.

Every refusal closes the connection (`Connection: close`): the rest of what the client sends is not
read as another request.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from swagger_server import problems
from swagger_server.problems import PROBLEM


@dataclass(frozen=True)
class HeadLimits:
    """The limits on a request head, enforced by the HTTP protocol while it is parsed (serving/protocol.py)."""

    max_url_bytes: int = 8190
    max_header_bytes: int = 32768
    max_headers: int = 100
    head_timeout: float = 10.0

    @classmethod
    def of(cls, api) -> HeadLimits:
        """From `[API]` settings (ApiSettings)."""
        return cls(api.max_url_bytes, api.max_header_bytes, api.max_headers, api.head_timeout)


_CLOSE = {"Connection": "close"}
# Headers that must not repeat: each is read by more than one component, or changes how the message
# is framed (Content-Length, Transfer-Encoding, Host: RFC 9112 §6.3 and §3.2).
SINGLE = frozenset(
    (
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"content-type",
        b"authorization",
        b"idempotency-key",
        b"x-request-id",
        b"x-consistency-token",
        b"origin",
    )
)
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
JSON = "application/json"

# RFC 9110 §5.6.2 token, §5.6.4 quoted-string (qdtext and quoted-pair, obs-text included).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})[ \t]*")
_PARAMETER = re.compile(rf';[ \t]*(?:({_TOKEN})=({_TOKEN}|"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"))?[ \t]*')

# Paths the service answers itself with a redirect (every method alike): a person who opens the root, or
# the API's base, wants the UI. The Location is a path, never built from the request's Host.
REDIRECTS = {"/": ("/api/ui/", 302), "/api": ("/api/ui/", 308), "/api/ui": ("/api/ui/", 308)}


def parse_media_type(value: bytes) -> tuple[str, dict[str, str]] | None:
    """(type/subtype in lower case, {parameter name in lower case: value}) or None when `value` is not
    a media type by RFC 9110 §8.3.1, or names a parameter twice."""
    text = value.decode("latin-1")
    match = _MEDIA_TYPE.match(text)
    if match is None:
        return None
    parameters: dict[str, str] = {}
    position = match.end()
    while position < len(text):
        parameter = _PARAMETER.match(text, position)
        if parameter is None or parameter.end() == position:
            return None
        name, raw = parameter.group(1), parameter.group(2)
        if name is not None:
            name = name.lower()
            if name in parameters:
                return None
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            parameters[name] = raw
        position = parameter.end()
    return f"{match.group(1)}/{match.group(2)}".lower(), parameters


class RequestGate:
    """ASGI middleware: the one reading of each request (see the module docstring)."""

    def __init__(self, app, *, max_bytes: int, body_timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        if path in REDIRECTS:  # the same answer for every method
            location, status = REDIRECTS[path]
            await problems.send(send, status, f"see {location}", {"Location": location})
            return
        if path.endswith("/") and path != "/" and not path.startswith("/api/ui/"):
            # Starlette would redirect to the path without the slash, in a Location built from Host.
            await problems.send(send, 404, "no such resource (paths here have no trailing slash)", _CLOSE)
            return

        for part, what in ((scope.get("raw_path") or b"", "path"), (scope.get("query_string") or b"", "query")):
            if b"%" in part and not _utf8(unquote_to_bytes(part.replace(b"+", b" "))):
                # uvicorn and Starlette would decode it with U+FFFD in place of the bad bytes.
                await problems.send(send, 400, f"the {what} is not UTF-8 once percent-decoded", _CLOSE, field=what)
                return

        single: dict[bytes, bytes] = {}
        headers = []
        for name, value in scope["headers"]:
            if b"_" in name:
                continue  # WSGI would read it as the same header with "-"; nobody reads it
            if name in SINGLE:
                if name in single:
                    await problems.send(
                        send,
                        400,
                        f"the {_name(name)} header may appear only once",
                        _CLOSE,
                        field=_name(name),
                    )
                    return
                single[name] = value
            if name not in (b"content-type", b"content-length", b"transfer-encoding"):
                headers.append((name, value))
        if scope.get("http_version") == "1.1" and b"host" not in single:
            await problems.send(send, 400, "an HTTP/1.1 request needs a Host header", _CLOSE, field="Host")
            return

        content_type = single.get(b"content-type")
        if content_type is not None:
            parsed = parse_media_type(content_type)
            if parsed is None:
                await problems.send(send, 400, "Content-Type is not a media type", _CLOSE, field="Content-Type")
                return
            media_type, parameters = parsed
            headers.append((b"content-type", media_type.encode()))

        declared, chunked = single.get(b"content-length"), single.get(b"transfer-encoding")
        if declared is not None and chunked is not None:
            await problems.send(send, 400, "Content-Length and Transfer-Encoding together", _CLOSE)
            return
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await problems.send(send, 400, "Content-Length must be a non-negative integer", _CLOSE)
                return
            if int(declared) > self.max_bytes:
                await problems.send(
                    send,
                    413,
                    f"the request body may be at most {self.max_bytes} bytes; Content-Length says {int(declared)}",
                    _CLOSE,
                    field="body",
                )
                return
        has_body = chunked is not None or (declared is not None and int(declared) > 0)
        if has_body:
            if content_type is None and method in BODY_METHODS:
                # Without it, Connexion would hand the raw bytes to the handler as the body.
                await problems.send(send, 415, "a request body needs Content-Type: application/json", _CLOSE)
                return
            if content_type is not None and (
                media_type != JSON or parameters.get("charset", "utf-8").lower() != "utf-8"
            ):
                await problems.send(
                    send, 415, "the request body must be application/json (charset utf-8, or none)", _CLOSE
                )
                return
            body = await self._read_body(receive, send)
            if body is None:
                return  # refused (413, 408), or the client went away
        else:
            body = b""
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, _replay(body, receive), send)

    async def _read_body(self, receive, send) -> bytes | None:
        """The whole body within `body_timeout`, at most `max_bytes`; None when refused or gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await problems.send(
                    send, 408, f"the request body did not arrive within {self.body_timeout:g} s", _CLOSE, field="body"
                )
                return None
            if message["type"] != "http.request":
                return None  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await problems.send(send, 413, f"the request body may be at most {self.max_bytes} bytes", _CLOSE)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _name(header: bytes) -> str:
    """`idempotency-key` -> `Idempotency-Key`, as a problem's `field`."""
    return "-".join(part.capitalize() for part in header.decode("latin-1").split("-"))


def _with_vary_origin(headers) -> list:
    """`headers` with `Origin` added to Vary, as Starlette's CORS middleware does it: the Vary values
    joined into one header where the first stood, or a new one at the end."""
    varies = [value for name, value in headers if name == b"vary"]
    if not varies:
        return [*headers, (b"vary", b"Origin")]
    joined = b", ".join([*varies, b"Origin"])
    out, placed = [], False
    for name, value in headers:
        if name == b"vary":
            if not placed:
                out.append((b"vary", joined))
                placed = True
        else:
            out.append((name, value))
    return out


def _replay(body: bytes, receive):
    """A receive channel that gives the whole body as one message, then the real channel's."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ProblemCORS(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflight is a problem+json (Starlette's is text/plain).

    A request without `Origin` (every request not from a browser on another origin) gets from Starlette
    only `Vary: Origin` on its answer, after it has built a Headers object of the request and a
    MutableHeaders of the answer; here the same header is added to the answer's list directly."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or any(name == b"origin" for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return

        async def send_with_vary(message):
            if message["type"] == "http.response.start":
                message["headers"] = _with_vary_origin(message.get("headers") or [])
            await send(message)

        await self.app(scope, receive, send_with_vary)

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        detail = bytes(response.body).decode("latin-1")  # "Disallowed CORS origin, method": no client text
        body = problems.document(response.status_code, detail)
        headers = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        return Response(body, status_code=response.status_code, headers=headers, media_type=PROBLEM)
