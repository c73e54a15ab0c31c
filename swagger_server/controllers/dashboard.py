"""The sales dashboard for a date range."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

from swagger_server import state as app_state
from swagger_server.controllers.conditional import evaluate
from swagger_server.controllers.reply import reply
from swagger_server.db.queries import dashboard
from swagger_server.errors import ApiError
from swagger_server.request_scope import get_conn, read_only, request_db

_DEFAULT_SPAN = timedelta(days=29)


@read_only
def get_dashboard(from_: str | None = None, to: str | None = None, top: int = 5):
    end = _day(to, "to") if to else datetime.now(UTC).date()
    # The default range is the 30 days up to `to`, cut at the first representable day.
    start = _day(from_, "from") if from_ else (end - _DEFAULT_SPAN if end - date.min > _DEFAULT_SPAN else date.min)
    if start > end:
        raise ApiError(f"'from' ({start}) is after 'to' ({end})", field="from")
    if (end - start).days > 3660:
        raise ApiError("the range may span at most 10 years", field="from")
    state = app_state.current()
    settings = state.settings
    # Its own timeout, never above the connection's (whose client-side deadline is sized for that one).
    timeout_ms = min(settings.api.dashboard_timeout_ms, settings.pool.statement_timeout_ms or 1 << 31)
    # A client that sends a consistency token has written something it expects to see (reports.py).
    report = state.reports.get(
        (start, end, top),
        lambda: dashboard.sales_report(get_conn(), start, end, top, timeout_ms),
        fresh=request_db().min_lsn > 0,
    )
    tag = report_etag(start, end, top, report.as_of)
    early = evaluate(tag)
    if early is not None:
        return early
    body = {"from": start.isoformat(), "to": end.isoformat(), "as_of": report.as_of, **report.body}
    return reply(body, 200, {"ETag": tag})


def report_etag(start: date, end: date, top: int, as_of: str) -> str:
    """A report's weak ETag: its range, `top` and the snapshot it was read in (`as_of`)."""
    digest = hashlib.sha256(f"{start}/{end}/{top}/{as_of}".encode()).hexdigest()[:24]
    return f'W/"{digest}"'


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(f"'{name}' must be a date like 2026-01-31, got {value!r}", field=name) from None
