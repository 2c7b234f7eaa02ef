"""The api's metrics (services/common/metrics.py): requests, calls as they end, starts,
429s, and the nodes' state as their heartbeats last told it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics import LATENCY_BUCKETS
from services.common.models import Call

from .policies import Node

HTTP_REQUESTS = Counter(
    "fum_http_requests_total",
    "HTTP requests answered by the api, by route template and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "fum_http_request_duration_seconds",
    "Time from a request's arrival to its answer (an invoke's latency), by route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
CALLS = Counter(
    "fum_calls_total", "Calls ended, by function and final status", ["function", "status"]
)
CALL_SECONDS = Histogram(
    "fum_call_duration_seconds",
    "Time a call ran in its sandbox, set-up included, by function",
    ["function"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "fum_call_queue_wait_seconds",
    "Time from a call's creation to its start in a sandbox, by function",
    ["function"],
    buckets=LATENCY_BUCKETS,
)
STARTS = Counter(
    "fum_starts_total",
    "Calls by how their sandbox was found: warm, specialized (a generic sandbox set up on "
    "the call) or cold (started on the call)",
    ["kind"],
)
SETUP_SECONDS = Histogram(
    "fum_start_setup_seconds",
    "Set-up time a call waited for (its initMs), by start kind",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter("fum_calls_rejected_total", "Invokes answered 429 (too many unfinished calls)")


def call_ended(call: Call) -> None:
    """Count a call the first time the api hears it end."""
    CALLS.labels(call.func_name, call.status).inc()
    if call.started_at is not None and call.finished_at is not None:
        CALL_SECONDS.labels(call.func_name).observe(max(0.0, call.finished_at - call.started_at))
        if call.created_at:
            # started_at is when a sandbox took it, before its set-up (initMs)
            QUEUE_SECONDS.labels(call.func_name).observe(
                max(0.0, call.started_at - call.created_at)
            )
    if call.start is not None:
        STARTS.labels(call.start).inc()
        if call.init_ms is not None:
            SETUP_SECONDS.labels(call.start).observe(call.init_ms / 1000)


class NodesCollector(Collector):
    """The nodes and their sandboxes, read from the dispatcher at each scrape."""

    def __init__(self, nodes: Callable[[], list[Node]], unfinished: Callable[[], int]) -> None:
        self._nodes = nodes
        self._unfinished = unfinished
        self.heartbeats: dict[int, int] = {}

    def heard(self, node_id: int) -> None:
        self.heartbeats[node_id] = self.heartbeats.get(node_id, 0) + 1

    def collect(self) -> Iterator[Metric]:
        nodes = self._nodes()
        yield GaugeMetricFamily("fum_nodes", "Workers registered and alive", len(nodes))
        yield GaugeMetricFamily(
            "fum_calls_unfinished", "Calls the api holds that have not ended", self._unfinished()
        )
        sandboxes = GaugeMetricFamily(
            "fum_sandboxes", "Sandboxes per node and state", labels=["node", "state"]
        )
        queued = GaugeMetricFamily(
            "fum_node_queued_calls", "Calls waiting on a node for a sandbox", labels=["node"]
        )
        capacity = GaugeMetricFamily(
            "fum_node_capacity", "Most sandboxes a node runs at once", labels=["node"]
        )
        for node in nodes:
            n = str(node.node_id)
            sandboxes.add_metric([n, "busy"], node.busy)
            sandboxes.add_metric([n, "idle"], sum(node.idle.values()))
            sandboxes.add_metric([n, "generic"], sum(node.generic.values()))
            queued.add_metric([n], node.queued)
            capacity.add_metric([n], node.capacity)
        heartbeats = CounterMetricFamily(
            "fum_worker_heartbeats", "Heartbeats the api took from each worker", labels=["node"]
        )
        for node_id, count in self.heartbeats.items():
            heartbeats.add_metric([str(node_id)], count)
        yield from (sandboxes, queued, capacity, heartbeats)
