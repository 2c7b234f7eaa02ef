"""Worker settings, from ``FUM_*`` environment variables."""

from __future__ import annotations

import hashlib
from typing import Literal

from services.common.archive import PackageLimits
from services.common.curve import DEFAULT_DIR


def node_number(name: str) -> int:
    """A stable node id from a node's name, for workers that are not numbered by hand."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:7], 16)


class WorkerSettings(PackageLimits, frozen=True, kw_only=True):
    node_id: int = -1  # -1: derived from node_name (a Swarm global service sets that)
    node_name: str = ""  # default: the host name
    api_endpoint: str = "tcp://127.0.0.1:3001"  # the api's ROUTER for workers
    api_url: str = "http://127.0.0.1:3000"  # the api's HTTP, where packages are fetched
    api_key: str = ""  # the API key it sends there, when the api asks for keys
    db_url: str = "tcp://127.0.0.1:3002"
    node_dir: str = ".fum/node-0"  # packages, sandboxes and caches of this node
    keys_dir: str = DEFAULT_DIR  # the control plane's CURVE keys (services/common/curve.py)
    # where it serves its metrics (services/common/metrics.py; 0: none); its base
    # PackageLimits keeps it from taking the MetricsSettings mixin the others take
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    pool_bind: str = ""  # the ROUTER miniworkers connect to; default: a unix socket
    # in node_dir (tcp on loopback where that path is too long for a unix socket)
    preload: Literal["runtime", "function", "none"] = "runtime"
    prewarm: int = 1  # sandboxes kept ready per runtime (or function) by the preload policy
    capacity: int = 8  # most sandboxes on this node
    spare: int = 1  # miniworker processes kept started ahead, for cold starts
    keep_warm: float = 600.0  # seconds an idle sandbox is kept beyond what preload keeps
    # seconds of a function's work (by its moving average of call times) a warm sandbox
    # takes in one batch of its queued calls; 0: one call at a time (docs/SCHEDULING.md)
    batch_work: float = 0.002
    retries: int = 1  # times a call is run again when its sandbox dies under it
    # A call still running after this many seconds is marked RUNNING in the db; shorter
    # ones go from PENDING to their end in one write.
    running_delay: float = 0.05
    driver: Literal["process", "docker"] = "process"
    heartbeat_interval: float = 1.0
    miniworker_timeout: float = 10.0  # no Alive from a miniworker for this long: it is dead
    setup_timeout: float = 300.0
    log_level: str = "info"
    # The keeper (or ZooKeeper ensemble, "host:port,host:port") as function sandboxes reach
    # it: given to every sandbox as FUM_KEEPER_HOSTS, used by fum.keeper(). "": none.
    keeper_hosts: str = ""
    # the docker driver (see MiniworkerSettings)
    docker_network: str = "fum"
    docker_host_ip: str = ""
    docker_registry: str = ""
