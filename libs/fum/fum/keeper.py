"""``fum.keeper()``: a started kazoo client of the keeper the cluster gives its functions.

The cluster puts the keeper's address (or a ZooKeeper ensemble's, ``host:port,...``) in
every sandbox's ``FUM_KEEPER_HOSTS``. The client is made on first use and kept for the
life of the function's process, so that what a call leaves (a lock it holds, its
ephemeral nodes, watches) is still there on the next call to the same sandbox; it is
closed when the process exits (its session ends and its ephemeral nodes go). kazoo is
imported only here, on first use: functions that do not call ``keeper()`` do not need it.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kazoo.client import KazooClient

HOSTS_VARIABLE = "FUM_KEEPER_HOSTS"
# How the client retries a command that must be tried again (a lost connection, or a
# recipe's optimistic write that lost a race, as Counter's): kazoo's default backs off
# up to an hour; a function's call has a timeout, so here the waits stay short.
COMMAND_RETRY = {"max_tries": -1, "delay": 0.01, "backoff": 2, "max_jitter": 0.05, "max_delay": 1.0}

_client: KazooClient | None = None
_lock = threading.Lock()


class NoKeeper(RuntimeError):
    """This function's cluster gives it no keeper, or kazoo is not installed."""


def keeper_hosts() -> str:
    """The keeper's address as this process was given it ("" when it has none)."""
    return os.environ.get(HOSTS_VARIABLE, "").strip()


def keeper(timeout: float = 15.0) -> KazooClient:
    """The process's kazoo client, connected (``timeout``: seconds to wait for that)."""
    global _client
    with _lock:
        if _client is None:
            hosts = keeper_hosts()
            if not hosts:
                raise NoKeeper(f"no keeper: {HOSTS_VARIABLE} is not set for this function")
            try:
                from kazoo.client import KazooClient
            except ImportError:
                raise NoKeeper(
                    "fum.keeper() needs kazoo: add it to the function's requirements"
                ) from None
            client = KazooClient(hosts=hosts, command_retry=dict(COMMAND_RETRY))
            client.start(timeout=timeout)
            atexit.register(_close, client)
            _client = client
        return _client


def _close(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:  # the process is exiting: nothing is left to tell
        pass
