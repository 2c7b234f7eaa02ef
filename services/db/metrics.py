"""The db's metrics (services/common/metrics.py): its transactions, as group commit runs
them (services/db/server.py)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
