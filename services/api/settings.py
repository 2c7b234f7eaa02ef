"""Api settings, from ``FUM_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from services.common.archive import PackageLimits
from services.common.curve import DEFAULT_DIR

Policy = Literal["warm-affinity", "least-loaded", "round-robin"]


class ApiSettings(PackageLimits, frozen=True, kw_only=True):
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    node_bind: str = "tcp://127.0.0.1:3001"  # the ROUTER workers connect to
    db_url: str = "tcp://127.0.0.1:3002"
    data_dir: str = ".fum/api"  # packages, stored by sha256
    keys_dir: str = DEFAULT_DIR  # the control plane's CURVE keys (services/common/curve.py)
    invocation_policy: Policy = "warm-affinity"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.5  # a worker silent this long is dead
    blocking_timeout: float = 60.0  # longest a blocking invoke waits before answering 202
    # A blocking call still running this long is stored by the api; one that ends sooner
    # is stored once, with its result, by its worker (docs/SCHEDULING.md, "Durability").
    store_delay: float = 0.02
    default_timeout: float = 60.0  # a function's call timeout when it sets none
    max_package_mb: int = 100
    # Seconds a stored package or build artifact that no function has is kept before it
    # is removed (an upload is stored before its function names it); checked every half
    # of it.
    package_grace: float = 600.0
    max_pending: int = 100_000  # most unfinished calls the api holds; more get 429
    queue_limit: int = 1000  # calls a function with a concurrency limit may have waiting
    retry_after: int = 1  # seconds, in the Retry-After of a 429
    # Seconds between sweeps for PENDING calls no one placed (made in the db for a
    # workflow or a trigger by a worker that died before handing them over).
    sweep_interval: float = 10.0
    # Who may send requests (docs/SECURITY.md): Host names (comma-separated; "*": any;
    # default: "localhost" when listening on loopback, else any), foreign page origins
    # ("https://app.example.org,..."; default: none), and the API keys file (default:
    # none, the api is open).
    allowed_hosts: str = ""
    allowed_origins: str = ""
    api_keys: str = ""
    max_json_mb: int = 32  # largest JSON body (a batch of calls, say); 413 beyond
    log_level: str = "info"
    # The keeper (or ZooKeeper ensemble) as the api reaches it, to read its tree for
    # GET /v1/keeper/nodes ("": none), and as clients reach it, told by /healthz
    # (default: the same; compose: keeper:2181 inside, 127.0.0.1:2181 on the host).
    keeper_hosts: str = ""
    keeper_client_hosts: str = ""
    # A file the api appends each new (method, route template, status) it answers to, one
    # "METHOD TEMPLATE STATUS" line each ("": none). The tests set it, to check every
    # status the OpenAPI document promises is one a test has seen (tests/conftest.py).
    status_record: str = ""
