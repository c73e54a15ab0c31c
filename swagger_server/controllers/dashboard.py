"""The sales dashboard for a date range."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from swagger_server.controllers.reply import reply
from swagger_server.db.queries import dashboard
from swagger_server.errors import ApiError
from swagger_server.request_scope import get_conn, read_only

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
    report = dashboard.sales_report(get_conn(), start, end, top)
    return reply({"from": start.isoformat(), "to": end.isoformat(), **report}, 200)


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(f"'{name}' must be a date like 2026-01-31, got {value!r}", field=name) from None
