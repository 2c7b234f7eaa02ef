"""Ports for servers that are told their port before they bind it (local clusters, the
process driver's sandboxes)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 12_000  # ports picked from, just below the ephemeral range


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, below the kernel's ephemeral range where there is room: the
    local ends of outgoing connections come from that range, so none can take the port
    in the moment between this choice and its server's bind (with many connections
    open, one did: a db's metrics server failed with "address in use")."""
    try:
        low = int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low - SPAN >= 1024:
        for _ in range(100):
            port = random.randrange(low - SPAN, low)
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # no room below it: any port the kernel gives
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
