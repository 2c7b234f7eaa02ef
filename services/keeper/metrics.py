"""The keeper's metrics (services/common/metrics.py): requests by operation, commits,
and its sessions, znodes and watches as they are at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics import LATENCY_BUCKETS

from .serialization import OpCode

# ZooKeeper's names of the operations, for the label
OPS = {
    value: name.lower()
    for name, value in vars(OpCode).items()
    if name.isupper() and name != "ERROR" and isinstance(value, int)
}
REQUEST_SECONDS = Histogram(
    "fum_keeper_request_duration_seconds",
    "Time the keeper took to apply one request, by operation (a write's reply also waits "
    "for its commit: fum_keeper_commit_duration_seconds)",
    ["op"],
    buckets=LATENCY_BUCKETS,
)
COMMIT_SECONDS = Histogram(
    "fum_keeper_commit_duration_seconds",
    "Time of one commit of the keeper's changes to its file (a group of writes)",
    buckets=LATENCY_BUCKETS,
)
# one child per operation, resolved once: the request path stays free of label lookups
BY_OP = {op: REQUEST_SECONDS.labels(name) for op, name in OPS.items()}


class KeeperCollector(Collector):
    """Sessions, znodes and watches, counted at each scrape."""

    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        sessions, znodes, watches = self._counts()
        yield GaugeMetricFamily("fum_keeper_sessions", "Live client sessions", sessions)
        yield GaugeMetricFamily("fum_keeper_znodes", "Nodes in the tree", znodes)
        yield GaugeMetricFamily("fum_keeper_watches", "Watches set (data and child)", watches)
