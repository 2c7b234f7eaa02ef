"""Miniworker settings, passed by its worker through ``FUM_*`` variables."""

from __future__ import annotations

from typing import Literal

from services.common.archive import PackageLimits

# Variables a sandbox needs to reach a package index through this node's network set-up.
PASSTHROUGH = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_TRUSTED_HOST",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
)


class MiniworkerSettings(PackageLimits, frozen=True, kw_only=True):
    mw_id: str
    node_id: int = 0
    worker_endpoint: str  # the worker's pool ROUTER
    sandbox_dir: str  # this miniworker's private folder on the node
    node_dir: str  # the node's folder (shared caches live there)
    driver: Literal["process", "docker"] = "process"
    alive_interval: float = 1.0
    setup_timeout: float = 300.0  # dependencies + the function's own set-up
    log_level: str = "info"
    keeper_hosts: str = ""  # FUM_KEEPER_HOSTS of every sandbox (see WorkerSettings)
    # the docker driver: the bridge network of function containers, the address they reach
    # this miniworker at (default: the network's gateway), and the registry to pull from
    docker_network: str = "fum"
    docker_host_ip: str = ""
    docker_registry: str = ""
