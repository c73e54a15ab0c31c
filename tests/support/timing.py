"""The upper bound a timing test puts on "answered within its timeout".

A timeout is honoured when the answer comes within it plus 10 % (the service's own slack: a poll
interval, a grace) plus 300 ms of scheduling: beside a parallel `make test` on two cores, the test's
own thread was seen to run up to 270 ms late (a 2 s pool timeout answered at 2.27 s), which says
nothing about the service. A lost timeout costs far more than either: a hang, or the next timeout
in a chain."""

from __future__ import annotations

SCHEDULING = 0.3


def within(timeout: float) -> float:
    """The latest an answer bounded by `timeout` seconds may come."""
    return timeout * 1.1 + SCHEDULING
