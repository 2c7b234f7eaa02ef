"""The db's metrics (services/common/metrics.py): its transactions, as group commit runs
them (services/db/server.py), and the workflow sessions and durable executions it holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics import LATENCY_BUCKETS

BATCH_SECONDS = Histogram(
    "fum_db_transaction_duration_seconds",
    "Time of one batch from its first request's decoding to its replies (one transaction)",
    ["writes"],
    buckets=LATENCY_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "fum_db_batch_requests",
    "Requests answered by one batch (group commit's batch size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
REQUESTS = Counter("fum_db_requests_total", "Requests answered, by message type", ["type"])
FAILED = Counter("fum_db_batches_failed_total", "Batches that were not committed")


class StatesCollector(Collector):
    """Workflow sessions and durable executions by status, counted at each scrape on a
    read-only connection of its own (the scrape's thread may not use the store's)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "fum_workflow_sessions", "Workflow sessions by status", labels=["status"]
        )
        executions = GaugeMetricFamily(
            "fum_durable_executions", "Durable coordinator executions by status", labels=["status"]
        )
        if self._path != ":memory:":
            db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=1.0)
            try:
                for family, table in ((sessions, "sessions"), (executions, "executions")):
                    query = f"SELECT status, COUNT(*) FROM {table} GROUP BY status"
                    for status, count in db.execute(query):
                        family.add_metric([status], count)
            finally:
                db.close()
        yield sessions
        yield executions
