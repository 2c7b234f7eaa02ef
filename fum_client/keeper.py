"""The cluster's keeper from a client: a started kazoo client (``Client.keeper()``).

Where the keeper is comes from the argument, else ``FUM_KEEPER_HOSTS``, else the api's
``GET /healthz`` (its ``keeper`` field, ``host:port``). The caller owns the kazoo client
it gets: ``stop()`` and ``close()`` it (its session ends, its ephemeral nodes go).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import FumError

if TYPE_CHECKING:
    from kazoo.client import KazooClient

HOSTS_VARIABLE = "FUM_KEEPER_HOSTS"


class NoKeeper(FumError):
    """The cluster names no keeper, or it did not answer in time."""


def configured_hosts(hosts: str | None) -> str | None:
    """The keeper's address from the argument or the environment (None: ask the api)."""
    return hosts or os.environ.get(HOSTS_VARIABLE, "").strip() or None


def start_keeper(hosts: str | None, api_url: str, timeout: float) -> KazooClient:
    """A kazoo client of ``hosts``, connected within ``timeout`` seconds."""
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError

    if not hosts:
        raise NoKeeper(f"the cluster at {api_url} has no keeper (its /healthz names none)")
    client = KazooClient(hosts=hosts)
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.close()
        raise NoKeeper(f"the keeper at {hosts} did not answer within {timeout:g}s") from None
    return client
