"""Api settings, from ``FUM_*`` environment variables."""

from __future__ import annotations

from typing import Literal

import msgspec

Policy = Literal["warm-affinity", "least-loaded", "round-robin"]


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    node_bind: str = "tcp://127.0.0.1:3001"  # the ROUTER workers connect to
    db_url: str = "tcp://127.0.0.1:3002"
    data_dir: str = ".fum/api"  # packages, stored by sha256
    invocation_policy: Policy = "warm-affinity"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.5  # a worker silent this long is dead
    blocking_timeout: float = 60.0  # longest a blocking invoke waits before answering 202
    # A blocking call still running this long is stored by the api; one that ends sooner
    # is stored once, with its result, by its worker (docs/SCHEDULING.md, "Durability").
    store_delay: float = 0.02
    default_timeout: float = 60.0  # a function's call timeout when it sets none
    max_package_mb: int = 100
    max_pending: int = 100_000  # most unfinished calls the api holds; more get 429
    queue_limit: int = 1000  # calls a function with a concurrency limit may have waiting
    retry_after: int = 1  # seconds, in the Retry-After of a 429
    log_level: str = "info"
    keeper_hosts: str = ""  # the keeper as clients reach it, told by /healthz ("": none)
