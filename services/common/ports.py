"""Ports for servers that are told their port before they bind it (local clusters, the
process driver's sandboxes)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 12_000  # ports picked from, just below the ephemeral range: services' in its
# lower half, sandboxes' in its upper half (a sandbox launched by a worker that is up
# must not take the port of a service of its cluster that is still starting)

# The ports this process has given: none is given twice (until half the span has gone),
# as several are chosen before any of their servers binds (a local cluster's seven or
# more): picked at random, two of them were the same about once in 600 cluster starts.
_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port for a service (a local cluster's), free right now and not given before by
    this process, below the kernel's ephemeral range where there is room: the local ends
    of outgoing connections come from that range, so none can take the port in the
    moment between this choice and its server's bind (with many connections open, one
    did: a db's metrics server failed with "address in use")."""
    return _pick(host, 0)


def sandbox_port(host: str = "127.0.0.1") -> int:
    """A port for a sandbox's FUM socket: as ``free_port``, from the other half."""
    return _pick(host, 1)


def _pick(host: str, half: int) -> int:
    if len(_given) > SPAN // 2:
        _given.clear()
    try:
        low = int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low - SPAN >= 1024:
        start = low - SPAN + half * (SPAN // 2)
        for _ in range(100):
            port = random.randrange(start, start + SPAN // 2)
            if port in _given:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    while True:  # no room below it: any port the kernel gives
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
