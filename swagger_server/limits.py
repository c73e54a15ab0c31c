"""Request size limits, enforced before the work: the body here, the request head in server.py.

`BodyLimit` is ASGI middleware in front of Connexion's validation (which reads a whole body into
memory before it looks at it). A `Content-Length` above the limit is answered `413` at once, without
reading a byte of the body. A chunked (or lying) body is counted as it arrives and stopped as soon as
it passes the limit, raising `PayloadTooLarge` inside whichever layer is reading it; the exception
middleware renders it as the same `413` problem. Either way the connection is closed afterwards, so
the rest of the body is never read. Memory stays at the limit plus one network read.

Two more rules that keep a body from being misread: a chunked body (no Content-Length) is read here,
up to the limit, and passed on with its length (Connexion would otherwise see no body at all); and a
body without a Content-Type is `415` (Connexion would otherwise hand the raw bytes to the handler).
"""

from __future__ import annotations

from swagger_server.errors import PayloadTooLarge, send_problem

_CLOSE = {"Connection": "close"}  # the rest of a refused body is never read


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get `413` problem+json."""

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = chunked = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = value
            elif name == b"content-type":
                content_type = value
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await send_problem(send, 400, "Content-Length must be a non-negative integer", _CLOSE)
                return
            if int(declared) > self.max_bytes:
                await send_problem(
                    send,
                    413,
                    f"the request body may be at most {self.max_bytes} bytes; Content-Length says {int(declared)}",
                    _CLOSE,
                )
                return
        has_body = chunked is not None or (declared is not None and int(declared) > 0)
        if has_body and content_type is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # Without it, Connexion would hand the raw bytes to the handler as the body.
            await send_problem(send, 415, "a request body needs Content-Type: application/json", _CLOSE)
            return
        if chunked is not None and declared is None:
            # Connexion reads a body only when Content-Length says there is one: read it here, up to the
            # limit, and pass it on with its length.
            messages, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    await send_problem(send, 413, f"the request body may be at most {self.max_bytes} bytes", _CLOSE)
                    return
                messages.append(message)
                if not message.get("more_body", False):
                    break
            # From here on it is an ordinary body of known length (WSGI below would look for chunks).
            headers = [(k, v) for k, v in scope["headers"] if k != b"transfer-encoding"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}
            receive = _replay(messages, receive)
        limit = self.max_bytes
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"the request body may be at most {limit} bytes", field="body", headers=_CLOSE
                    )
            return message

        await self.app(scope, counted_receive, send)


def _replay(messages: list, receive):
    """A receive channel that gives `messages` first, then the real channel's."""
    pending = iter(messages)

    async def replay():
        for message in pending:
            return message
        return await receive()

    return replay
