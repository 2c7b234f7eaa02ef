"""A worker's metrics (services/common/metrics.py): its sandboxes (each a miniworker, so
the miniworkers are counted here) and the calls waiting for one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SPAWNED = Counter(
    "fum_worker_sandboxes_started_total",
    "Sandboxes (miniworkers) this worker started, by what they were started for: a "
    "waiting call (cold), a function's warm pool, or its runtime's generic pool",
    ["purpose"],
)


class PoolCollector(Collector):
    """Sandboxes by state and calls waiting, read from the pool at each scrape."""

    def __init__(self, state: Callable[[], tuple[dict[str, int], int]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        states, queued = self._state()
        sandboxes = GaugeMetricFamily(
            "fum_worker_sandboxes", "This node's sandboxes by state", labels=["state"]
        )
        for state in ("starting", "preparing", "idle", "busy", "spare", "stopping"):
            sandboxes.add_metric([state], states.get(state, 0))
        yield sandboxes
        yield GaugeMetricFamily(
            "fum_worker_queued_calls", "Calls on this node waiting for a sandbox", queued
        )
