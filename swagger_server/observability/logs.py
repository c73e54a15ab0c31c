"""The access log: one line per request on stdout, written by a thread so the event loop never waits.

The logger is the process's (`store_api.access`), as logging is; the newest app in a process installs
its handler. Lines are JSON for machines or short text for a person (`[API] log_format`).

Every other log line of the process (gunicorn's, uvicorn's, OpenTelemetry's own warnings, which quote
`tracestate` and `baggage` headers) passes `SafeLines` (`guard_process_logs`): each message is one line
of at most MAX_MESSAGE characters, anything not printable escaped (`\x85`, `\u2028`, `\u202e`), so
no client byte can forge a line, reorder text, or fill the log.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import sys
import threading
import time
from datetime import UTC, datetime

import orjson

access_log = logging.getLogger("store_api.access")
MAX_MESSAGE = 1000  # characters of a log message; a line adds its time, level and origin
# What str.splitlines() breaks on that JSON (orjson) leaves raw in a string.
_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def safe_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as one printable line of at most about `limit` characters (`text` itself when it is)."""
    if text.isprintable() and len(text) <= limit:
        return text
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[: limit * 2])
    if len(escaped) > limit or len(text) > limit * 2:
        escaped = escaped[:limit] + f"... ({len(text)} chars)"
    return escaped


class SafeLines(logging.Filter):
    """A handler's filter: the record's message made one bounded, printable line (see safe_text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = safe_text(message)
        if safe is not message:
            record.msg, record.args = safe, None
        return True


def guard_process_logs() -> None:
    """SafeLines on every handler of the root logger and of gunicorn's error log (uvicorn's shares
    them); where the root logger has none, one on stderr, so a library's warning is not written by
    logging's last-resort handler, which writes any message as it is."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    for handler in [*root.handlers, *logging.getLogger("gunicorn.error").handlers]:
        if not any(isinstance(f, SafeLines) for f in handler.filters):
            handler.addFilter(SafeLines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            line = orjson.dumps(entry, default=str).decode()
        except TypeError:  # an integer beyond 64 bits, a key that is not a string: the standard library
            line = json.dumps(entry, separators=(",", ":"), default=str)
        return line if line.isascii() else line.translate(_BREAKS)


class TextFormatter(logging.Formatter):
    """One short line per request, for a person at a terminal (`make run`); coloured by status on a tty."""

    COLOURS = {2: "\033[32m", 3: "\033[36m", 4: "\033[33m", 5: "\033[31m"}

    def __init__(self, colour: bool):
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        f = getattr(record, "fields", {})
        if "status" not in f:
            return f"{record.levelname.lower()} {safe_text(record.getMessage())}"
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        status = str(f["status"])
        if self.colour:
            status = f"{self.COLOURS.get(f['status'] // 100, '')}{status}\033[0m"
        wait = f" (waited {f['pool_wait_ms']} ms)" if f.get("pool_wait_ms") and f["pool_wait_ms"] >= 1 else ""
        trace = f" trace {f['trace_id']}" if f.get("trace_id") else ""  # tracing on: find the request's spans
        return f"{when} {f['method']:<6} {f['path']} {status} {f['duration_ms']:.1f} ms{wait}{trace}"


class BackgroundStreamHandler(logging.Handler):
    """A log handler that never makes its caller (the event loop) wait on the stream.

    Records go on a queue; a writer thread wakes every FLUSH_INTERVAL, formats what has queued up and
    writes it in as few calls as PIPE_BUF allows (below). A stdout that blocks (a slow pipe to a log collector) then stalls only the
    writer. The queue is bounded: past MAX_QUEUED lines, new ones are dropped and counted
    (store_api_access_log_dropped), so a stuck stdout cannot grow the worker's memory. Each write is
    whole lines of at most PIPE_BUF bytes, so lines of workers sharing one pipe never interleave."""

    FLUSH_INTERVAL = 0.02
    MAX_QUEUED = 10_000
    PIPE_BUF = select.PIPE_BUF  # 4096 on Linux: the largest write to a pipe that stays whole

    def __init__(self, stream, on_drop=None):
        super().__init__()
        self.stream = stream
        self.on_drop = on_drop  # called for each dropped line (the app counts them)
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = 0
        self._start_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pid != os.getpid():
            self._start()
        if self._queue.qsize() >= self.MAX_QUEUED:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self._queue.put(record)

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()  # a parent's queue (and its thread) stayed behind in the fork
            threading.Thread(target=self._run, args=(self._queue,), name="access-log", daemon=True).start()
            self._pid = os.getpid()

    def _run(self, records: queue.SimpleQueue) -> None:
        while True:
            time.sleep(self.FLUSH_INTERVAL)
            self._drain(records)

    def _drain(self, records: queue.SimpleQueue) -> None:
        lines = []
        while True:
            try:
                record = records.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        # Several workers share one stdout pipe, and a write to a pipe is whole only up to PIPE_BUF
        # bytes: each write here is at most that, and whole lines, so two workers' lines never mix.
        chunk: list[str] = []
        size = 0
        for line in lines:
            length = len(line.encode("utf-8", "replace")) + 1
            if chunk and size + length > self.PIPE_BUF:
                self._write(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            self._write(chunk)

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except Exception:
            pass  # stdout gone (the worker is exiting): nothing to write to

    def flush(self) -> None:
        """Write what is queued now, on the caller's thread (shutdown, tests)."""
        if self._pid == os.getpid():
            self._drain(self._queue)


def flush_access_log() -> None:
    """Write out the access log lines still queued (the app's lifespan shutdown)."""
    for handler in access_log.handlers:
        handler.flush()


def setup_access_log(enabled: bool, log_format: str = "json", on_drop=None) -> None:
    """Send the access log to stdout (one handler per process, the newest app's): JSON lines, or short
    text lines for a person. `on_drop` is called for each line dropped because stdout is stuck."""
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    for handler in [h for h in access_log.handlers if getattr(h, "store_api_access", False)]:
        access_log.removeHandler(handler)
    handler = BackgroundStreamHandler(sys.stdout, on_drop)
    handler.setFormatter(TextFormatter(sys.stdout.isatty()) if log_format == "text" else JsonFormatter())
    handler.store_api_access = True
    access_log.addHandler(handler)


def log_request(fields: dict) -> None:
    """One access-log line (when the access log is on). The record is made here and handed to the
    logger's handlers, as `access_log.info` does, without its search of the call stack for the
    caller's file and line (which the access log never shows): a third of the line's cost on the loop."""
    if access_log.isEnabledFor(logging.INFO):
        record = logging.LogRecord(access_log.name, logging.INFO, __file__, 0, "request", None, None)
        record.fields = fields
        handlers = access_log.handlers
        if len(handlers) == 1 and type(handlers[0]) is BackgroundStreamHandler and not access_log.filters:
            # Only our writer (its level is NOTSET): to it directly, past Logger.handle's empty checks.
            handlers[0].handle(record)
        else:
            access_log.handle(record)
