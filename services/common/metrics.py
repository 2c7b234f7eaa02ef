"""Prometheus metrics: what each service counts, in the Prometheus text format.

Every process keeps its metrics in prometheus_client's default registry (its own
``process_*`` figures come with it). The api serves them at ``/metrics`` on its HTTP
port; the db, the workers and the keeper each serve them on a port of their own
(``FUM_METRICS_PORT``; 0, the default when a service is started by hand, serves none;
``fum up`` and compose give every service one). The metrics of each service are
defined in its own ``metrics.py``; this module holds what they share.

Names follow Prometheus' conventions: base units (seconds), ``_total`` for counters,
and labels of small, bounded sets (a function's name, a status, a node): never a call
number or parameters.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from prometheus_client.registry import Collector

log = structlog.get_logger()

C = TypeVar("C", bound=Collector)

# Seconds, from a warm call's milliseconds to a minute's timeout.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip

__all__ = [
    "CONTENT_TYPE_LATEST",
    "LATENCY_BUCKETS",
    "MetricsSettings",
    "exposition",
    "register",
    "serve",
]


def serve(port: int, host: str, service: str) -> None:
    """Serve this process's metrics on ``host:port`` (a thread of prometheus_client's
    own), unless ``port`` is 0."""
    if port == 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics.serving", service=service, url=f"http://{host}:{port}/metrics")


def exposition() -> bytes:
    """The text a scrape of this process gets."""
    return generate_latest(REGISTRY)


def register(collector: C) -> C:
    """Add a collector of figures read at scrape time (a gauge of live state). One of the
    same class registered before (a service started twice in one process, as some tests
    do) is replaced."""
    for old in [c for c in _REGISTERED if type(c) is type(collector)]:
        REGISTRY.unregister(old)
        _REGISTERED.remove(old)
    REGISTRY.register(collector)
    _REGISTERED.append(collector)
    return collector


_REGISTERED: list[Collector] = []


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a service other than the api serves its metrics (a settings mixin)."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: none
