"""The HTTP protocol: uvicorn's httptools protocol, with limits on the request head enforced while it
is parsed.

gunicorn's `limit_request_line` / `limit_request_fields` / `limit_request_field_size` do nothing under
the uvicorn worker (uvicorn parses HTTP itself), and uvicorn has no such limits for httptools: a 10 MB
header or 20 000 headers were read into memory and served. Here the request line, the head's total
size and its number of headers are checked as bytes arrive, before the head is complete, and a head
over a limit is answered `414` or `431` problem+json and the connection closed. Memory per connection
stays at the limit plus one network read. Only the head counts: a read in which a head or a body is
completed (and which may carry a body, or pipelined requests) adds nothing to the count.

A head must also arrive whole within `head_timeout` seconds of its first byte, and the first request's
first byte within `head_timeout` of the accept (uvicorn has neither: a client that sends half a head,
or nothing, held its socket for ever): `408` and closed.
Two more things uvicorn does that a request must not be able to use:
- chunked trailer fields: httptools reports them like header fields and uvicorn appends them to the
  request's headers (the same list the app reads), so an `Authorization` sent as a trailer after the
  body authenticated the request when it arrived in the same read as the head. Here trailer fields are
  dropped (RFC 9110 §6.5.1 allows discarding them); their count and size count against the head's
  limits, and the bytes of a chunked body that are not body (chunk framing, extensions, trailers)
  are bounded as they arrive, so a 24 MiB trailer is refused after at most one read past the limit;
- protocol upgrades (`Connection: upgrade` with `Upgrade`, and CONNECT): this service speaks HTTP/1.1
  only, so such a request is `400` and closed, logged and counted (uvicorn's WebSocket path answered
  `500 text/plain`, never logged).

Protocol-level refusals are counted in /metrics and logged like any other answer.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from swagger_server import problems
from swagger_server.pipeline.gate import HeadLimits
from swagger_server.serving import DEFAULTS, ServingOptions

LINGER_SECONDS = 2.0  # how long a refused client's remaining bytes are read and dropped
SHUTDOWN_GRACE = 1.0  # at shutdown, how long a connection between requests may still bring one
# Bytes a chunk's framing may take beyond the head limit: a size line with CRLF, the CRLF after the
# data ("ffffffff\r\n" ... "\r\n": 12), with room for a short extension.
CHUNK_FRAMING = 40


class _Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the app's head limits (HeadLimits, swagger_server/pipeline/gate.py),
    given one frozen ServingOptions by the worker's server (worker.py) as it makes each connection's."""

    def __init__(self, config, *args, options: ServingOptions = DEFAULTS, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.limits: HeadLimits = options.limits
        self._record_refusal = options.record_refusal
        self._share = options.share  # counted open by the acceptor
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._lingering = False
        self._head_completed = False  # a head was completed during the current read
        self._head_size = 0  # the current head's fields and target, as parsed
        self._cycles: list = []  # requests on this connection whose answers are not complete
        self._refusal = None  # (answer, the refused request's cycle or None) waiting its turn
        self._head_timer = None
        self._chunks = 0  # chunks of the current message so far
        self._framing = 0  # bytes of the current message after its head that were not body
        self._body_in_read = 0  # body bytes the parser found in the current read
        self._message_completed = False  # a message was completed during the current read
        self._draining = None  # at shutdown: the timer that closes a connection between requests

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # The head's deadline runs from accept, not from the first byte: a connection that sends
        # nothing is answered 408 and closed at head_timeout, as one that sends half a head is
        # (without it, 8 000 silent connections held 46 MB and stayed).
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._nothing_sent)

    def _nothing_sent(self) -> None:
        self._head_expired()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._head_size = 0
        self._chunks = 0
        self._framing = 0
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self._lingering and not self.transport.is_closing():
            self._refuse(408, f"the request head did not arrive within {self.limits.head_timeout:g} s")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            raise _Refused(414, f"the request target may be at most {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4  # "name: value\r\n", near enough
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, f"a request may have at most {self.limits.max_headers} header and trailer fields")
        if not self._in_head:
            # A trailer field (after a chunked body): never a request header. Counted with the head.
            if self._head_size + len(self.url) > self.limits.max_header_bytes:
                raise _Refused(
                    431, f"the request head and trailer fields may be at most {self.limits.max_header_bytes} bytes"
                )
            return
        super().on_header(name, value)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            raise _Refused(400, "this server speaks HTTP/1.1 only: a protocol upgrade (or CONNECT) is refused")
        # A head that arrived in one read was not counted as bytes (data_received): its size is checked
        # here, from what the parser found in it.
        if self._head_size + len(self.url) > self.limits.max_header_bytes:
            raise _Refused(431, f"the request head may be at most {self.limits.max_header_bytes} bytes")
        self._in_head = False
        self._head_bytes = 0
        self._head_completed = True
        self._cancel_head_timer()
        super().on_headers_complete()
        if self._draining is not None:
            self.cycle.keep_alive = False  # the last request of a connection the server is closing
        # The TCP peer, before any forwarding header rewrites `client` (tracing trusts peers, not names).
        self.scope["store_api_peer"] = self.client
        self._cycles.append(self.cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._message_completed = True

    def data_received(self, data: bytes) -> None:
        """uvicorn's data_received, written out rather than extended: its body is one parser call
        wrapped in the error handling this must replace (a parser error is our problem+json refusal,
        not uvicorn's plain-text 400, and an upgrade is refused, not handed to a WebSocket handler);
        around it, the head's bytes are counted and a body's framing bounded per read. What it calls
        of uvicorn (`_unset_keepalive_if_required`, `parser`) is in patches.RELIED_ON."""
        if self._lingering:
            return  # refused: what the client still sends is read and dropped
        in_head = self._in_head
        self._head_completed = False
        self._message_completed = False
        self._body_in_read = 0
        try:
            super_feed = self.parser.feed_data
            self._unset_keepalive_if_required()
            super_feed(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if cause is not None:
                self._refuse(cause.status, cause.detail)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, "invalid HTTP request")
            return
        except httptools.HttpParserUpgrade:  # refused in on_headers_complete; not reached
            self._refuse(400, "this server speaks HTTP/1.1 only: a protocol upgrade (or CONNECT) is refused")
            return
        if in_head and self._in_head and not self._head_completed:
            # The read began and ended inside one head: all of it is head. A read that completes a head
            # or a body (and may carry a body, or pipelined requests) is never counted: a head begun in
            # it is at most one read long, and is counted from the next read on.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request head may be at most {self.limits.max_header_bytes} bytes")
        elif not in_head and not self._in_head and not self._message_completed:
            # The read fell inside a body. What in it was not body is chunk framing or trailer fields:
            # bounded as it arrives (httptools would otherwise gather a trailer of any size in memory).
            self._framing += len(data) - self._body_in_read
            if self._framing > self.limits.max_header_bytes + CHUNK_FRAMING * self._chunks:
                self._refuse(
                    431, f"the request head and trailer fields may be at most {self.limits.max_header_bytes} bytes"
                )

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` and close. The answer goes out after the answers to every earlier request
        on this connection (pipelined requests are answered in order: an early refusal would be read
        as the answer to an earlier request), then the connection closes the way nginx's
        lingering_close does: stop sending, discard what the client still sends for up to
        LINGER_SECONDS, then close (closing at once, with unread bytes from the client, sends a reset
        that can destroy the answer before the client reads it)."""
        self._cancel_head_timer()
        cycle = getattr(self, "cycle", None)
        refused = None
        if not self._in_head and cycle is not None and not cycle.response_complete:
            # The app already has this request (its head was complete; its body was not valid HTTP).
            # Its app sends nothing (disconnected): this refusal is its answer, and it is recorded once,
            # with this status (observability/middleware.py reads the mark on the scope).
            self.scope["store_api_refused"] = status
            cycle.disconnected = True
            cycle.message_event.set()
            refused = cycle
        else:
            self._record_refusal(status, self.client)
        headers, body = problems.asgi(status, detail, {"Connection": "close"})
        out = [b"HTTP/1.1 %d %s\r\n" % (status, problems.title(status).encode())]
        out += [name + b": " + value + b"\r\n" for name, value in headers]
        out += [b"\r\n", body]
        self._in_head = False  # nothing more is parsed on this connection
        self._lingering = True
        self._refusal = (b"".join(out), refused)
        self._send_refusal_when_due()

    def _send_refusal_when_due(self) -> None:
        answer, refused = self._refusal
        if any(c is not refused and not c.response_complete and not c.disconnected for c in self._cycles):
            return  # an earlier request is still being answered: on_response_complete calls again
        self._refusal = None
        if self.transport.is_closing():
            return
        self.transport.write(answer)
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cycles = [c for c in self._cycles if not c.response_complete]
        if self._refusal is not None:
            self._send_refusal_when_due()

    def shutdown(self) -> None:
        """uvicorn closes a connection between requests at once when the server shuts down (a reload, a
        restart), and a request the client had just sent on it (a new connection, accepted an instant
        before) was reset unanswered. Such a connection gets SHUTDOWN_GRACE: a request that arrives is
        answered, with `Connection: close`; otherwise it is closed then. uvicorn waits for open
        connections before the worker exits, within gunicorn's graceful timeout."""
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and not self.transport.is_closing() and not self._lingering:
            if self._draining is None:
                self._draining = self.loop.call_later(SHUTDOWN_GRACE, self._close_if_between_requests)
            return
        super().shutdown()

    def _close_if_between_requests(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.keep_alive = False

    def connection_lost(self, exc) -> None:
        if self._share is not None:
            self._share.closed()
        if self._draining is not None:
            self._draining.cancel()
        # uvicorn marks only the newest request disconnected; with pipelined requests, an earlier one
        # still running would write to the closed transport (a RuntimeError, a traceback). Every
        # request on the connection is told.
        for cycle in self._cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._cancel_head_timer()
        if getattr(self, "_linger", None) is not None:
            self._linger.cancel()
        super().connection_lost(exc)
