"""The spec and the Swagger UI, rendered once per process instead of on every request.

Connexion renders `/api/openapi.json` (json.dumps of the whole spec), `/api/openapi.yaml` (a YAML dump,
tens of milliseconds) and the UI's page (a Jinja template) on the event loop for every request, and
serves the UI's files from disk through a thread. A client that asks for them in a loop stalled every
other request of the worker. Here the first successful `GET` of each is captured as Connexion answered
it, and every later one (`GET` or `HEAD`) is sent from memory: a few hundred microseconds of the loop.

Only known paths are kept (the spec, and the UI's files by plain name), only complete `200` answers
to a request without `Range` or conditional headers, at most `MAX_ENTRIES` of at most `MAX_BYTES`:
what a client sends cannot grow the cache. The answer depends on nothing in the request but its path
and the server's root path (Connexion's own rendering uses only those).
"""

from __future__ import annotations

import re

MAX_ENTRIES = 64
MAX_BYTES = 8 * 1024 * 1024
_CACHEABLE = re.compile(r"/api/openapi\.(?:json|yaml)|/api/ui/(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9]+)*)?")
_PREFIXES = ("/api/openapi.", "/api/ui/")  # what _CACHEABLE can match starts with one of these
_VARIANT_HEADERS = frozenset((b"range", b"if-none-match", b"if-modified-since", b"if-range", b"if-match"))
_DROPPED = frozenset((b"date", b"accept-ranges", b"etag", b"last-modified", b"server"))


class RenderedOnce:
    """ASGI middleware: the spec and UI answers, captured on first use, then served from memory."""

    def __init__(self, app):
        self.app = app
        self.cache: dict[tuple[str, str], tuple[int, list, bytes]] = {}

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(_PREFIXES)
            or scope["method"] not in ("GET", "HEAD")
            or not _CACHEABLE.fullmatch(path)
        ):
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("root_path", ""))
        entry = self.cache.get(key)
        if entry is not None:
            status, headers, body = entry
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            return
        if scope["method"] != "GET" or any(name in _VARIANT_HEADERS for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []
        size = 0

        async def capture(message):
            nonlocal size
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and size <= MAX_BYTES:
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if not message.get("more_body", False) and start.get("status") == 200 and size <= MAX_BYTES:
                    if len(self.cache) < MAX_ENTRIES:
                        headers = [(k, v) for k, v in start.get("headers", []) if k not in _DROPPED]
                        self.cache[key] = (200, headers, b"".join(chunks))
            await send(message)

        await self.app(scope, receive, capture)
