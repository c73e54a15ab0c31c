"""The dashboard's reports, kept for a short while in each worker (`[API] dashboard_max_age`).

A report is exact as of its snapshot (`as_of`, the database's time); its customer figures cost time
that grows with the range (a year of 5 million orders: about a second, docs/SCALING.md). So a report
is computed once per range and `top` and served to every request for that range until it is older
than `max_age` seconds (at most 60): a dashboard that many people keep open costs one query per
range per worker per `max_age`, and every answer says how old it is. Requests for the same report
while it is being computed wait for that one computation (single flight) instead of starting their
own. A client that sends an `X-Consistency-Token` has written something it expects to see: it gets
a report computed for it. A report read on a replica is as of the replica's snapshot, which is at
most `[REPLICA] max_lag` behind the primary's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_REPORTS = 256  # reports kept per worker (a report of the default range is a few kB; 50 top rows ~10 kB)


@dataclass(frozen=True)
class Report:
    body: dict
    as_of: str  # ISO 8601, the database's time of the snapshot
    made: float  # time.monotonic() when it was computed


class _Flight:
    """One computation of a report that other requests for it wait on."""

    def __init__(self):
        self.done = threading.Event()
        self.report: Report | None = None
        self.error: BaseException | None = None


class ReportCache:
    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._reports: OrderedDict[tuple, Report] = OrderedDict()
        self._flights: dict[tuple, _Flight] = {}

    def get(self, key: tuple, compute: Callable[[], tuple[dict, str]], fresh: bool = False) -> Report:
        """The report for `key`: a kept one younger than max_age (unless `fresh`), else the one being
        computed for another request, else `compute()`'s (body, as_of), kept. An error in `compute`
        is raised in its own request only, and nothing is kept: each request that waited for it then
        computes its own."""
        if self.max_age <= 0:  # off: every request reads its own report, alone
            body, as_of = compute()
            return Report(body, as_of, self._clock())
        with self._lock:
            kept = self._reports.get(key)
            if kept is not None and not fresh and self._clock() - kept.made < self.max_age:
                return kept
            flight = None if fresh else self._flights.get(key)
            mine = flight is None
            if mine:
                flight = _Flight()
                if not fresh:
                    self._flights[key] = flight
        if not mine:
            flight.done.wait()
            if flight.report is not None:
                return flight.report
            # It failed in the other request: its error is that request's (a read cancelled on the
            # replica is retried on the primary by its own request). This one reads for itself.
            body, as_of = compute()
            return Report(body, as_of, self._clock())
        try:
            body, as_of = compute()
            flight.report = Report(body, as_of, self._clock())
            return flight.report
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                if flight.report is not None:
                    self._reports[key] = flight.report
                    self._reports.move_to_end(key)
                    while len(self._reports) > MAX_REPORTS:
                        self._reports.popitem(last=False)
            flight.done.set()
