"""HTTP on raw sockets, for tests that must send what a client library would normalise away (a header
twice, in another case, with `_`, a lying length, half a head) and read exactly what came back."""

from __future__ import annotations

import collections
import json
import re
import socket
import time
from dataclasses import dataclass, field

import requests


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float = 0.0
    closed: bool = False  # the server closed the connection after this answer
    more: list[Answer] = field(default_factory=list)  # further answers on the same connection

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def problem(self) -> dict:
        assert self.header("content-type") == "application/problem+json", (self.status, self.headers, self.body)
        return json.loads(self.body)


def request_bytes(method: str, path: str, headers=(), body: bytes = b"", host: str | None = "t") -> bytes:
    """A request as bytes. `headers` are "Name: value" strings (or bytes) sent exactly as given;
    Content-Length is added for a body unless a framing header is among them."""
    lines = [f"{method} {path} HTTP/1.1".encode()]
    if host is not None:
        lines.append(f"Host: {host}".encode())
    given = [h if isinstance(h, bytes) else h.encode("latin-1") for h in headers]
    lines += given
    framed = any(h.lower().startswith((b"content-length", b"transfer-encoding")) for h in given)
    if body and not framed:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Connection:
    """One TCP connection: send bytes, read answers one by one."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_answer(self, head_only: bool = False) -> Answer | None:
        """The next answer, or None if the connection closed before one began. `head_only`: the answer
        to a HEAD request (its Content-Length is GET's; no body follows)."""
        start = time.monotonic()
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                if self.buffer:
                    raise AssertionError(f"connection closed inside an answer's head: {self.buffer[:200]!r}")
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        length = (
            0 if head_only or status == 304 else next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        )
        while len(self.buffer) < length:
            if not self._fill():
                raise AssertionError("connection closed inside an answer's body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body, time.monotonic() - start)

    def closed_after(self, wait: float = 3.0) -> bool:
        """Whether the server closes the connection (within `wait` s) without sending anything more."""
        self.sock.settimeout(wait)
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        return not self.buffer

    def close(self) -> None:
        self.sock.close()


def exchange(port: int, data: bytes, timeout: float = 10.0, answers: int = 1) -> Answer:
    """Send `data` on a new connection; the first answer (with up to `answers - 1` more in `.more`), and
    whether the server then closed the connection."""
    conn = Connection(port, timeout)
    try:
        started = time.monotonic()
        conn.send(data)
        first = conn.read_answer(head_only=data.startswith(b"HEAD "))
        assert first is not None, f"no answer to {data[:120]!r}"
        first.elapsed = time.monotonic() - started
        for _ in range(answers - 1):
            nxt = conn.read_answer()
            if nxt is None:
                break
            first.more.append(nxt)
        first.closed = conn.closed_after(3.0) if first.header("connection") == "close" else conn.eof
        return first
    finally:
        conn.close()


def statuses(server) -> collections.Counter:
    """status -> the requests a live server's /metrics has counted (every worker)."""
    text = requests.get(f"{server.base}/metrics", timeout=5).text
    counts: collections.Counter = collections.Counter()
    for status, value in re.findall(r'^store_api_requests_total\{[^}]*status="(\d+)"[^}]*\} ([0-9.e+]+)$', text, re.M):
        counts[int(status)] += int(float(value))
    return counts


class Tally:
    """What a module's clients received from its live server, by status: `begin` when the server is up,
    `send` (or count into `received` by hand), and a module's last test calls `check`."""

    def __init__(self):
        self.received: collections.Counter = collections.Counter()
        self.baseline: collections.Counter = collections.Counter()

    def begin(self, server) -> None:
        self.baseline = statuses(server)

    def send(self, server, data: bytes, answers: int = 1, timeout: float = 10.0) -> Answer:
        answer = exchange(server.port, data, timeout=timeout, answers=answers)
        for one in (answer, *answer.more):
            self.received[one.status] += 1
        return answer

    def check(self, server) -> None:
        """The server's metrics count exactly the answers its clients received (however many tests
        ran), and its log has no traceback, no 500 and no line over 2 000 characters."""
        counts = statuses(server)
        delta = {status: counts[status] - self.baseline[status] for status in counts}
        delta = {status: n for status, n in delta.items() if n}
        assert delta == dict(self.received)
        output = server.output()
        assert '"status":' in output, "the access log is on (the observer works)"
        assert "Traceback" not in output
        assert '"status":500' not in output and "500 Internal" not in output
        assert max(len(line) for line in output.splitlines()) <= 2000
