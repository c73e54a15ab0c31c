"""The serving layer: what stands between a socket and the app, per gunicorn worker.

- `worker.py`: the gunicorn worker class (uvicorn_worker's, extended), its uvicorn Server;
- `acceptor.py`: how a worker takes connections (a fair share of the master's, FairAcceptor);
- `protocol.py`: the HTTP protocol (uvicorn's httptools protocol, extended: head limits and timeouts,
  trailers dropped, upgrades refused).

The app hands this layer one frozen ServingOptions (made by the worker from the app's state), never
attributes added to uvicorn's or gunicorn's objects. Every framework name this layer relies on is in
swagger_server/patches.py RELIED_ON, checked by tests/project/test_patches.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swagger_server.pipeline.gate import HeadLimits


def _unrecorded(status: int, client) -> None:
    """No metrics to record a refusal in (a protocol made without an app, as in a unit test)."""


@dataclass(frozen=True)
class ServingOptions:
    limits: HeadLimits = HeadLimits()  # the request head's limits and timeouts ([API] max_*_bytes, head_timeout)
    record_refusal: Callable[[int, Any], None] = _unrecorded  # a refusal by the protocol, counted and logged
    share: Any = None  # this worker's Share of the master's open connections (acceptor.py), or None


DEFAULTS = ServingOptions()
