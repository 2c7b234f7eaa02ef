"""Health checks for containers: ``python -m services.common.health db|http|keeper ADDRESS``.

Exit 0 when the service answers within two seconds, 1 otherwise (Docker's contract). The
db is asked with the keys of ``FUM_KEYS_DIR`` (the service's own, in its container).
"""

from __future__ import annotations

import socket
import sys
import urllib.request

import zmq

from .curve import ClusterKeys, KeysSettings
from .db_protocol import DB_PROTOCOL, Ping, Pong
from .settings import load_settings

DEADLINE_MS = 2000


def db_answers(endpoint: str) -> bool:
    """A Ping over a plain REQ socket gets a Pong."""
    keys = ClusterKeys.load(load_settings(KeysSettings).keys_dir)
    ctx = zmq.Context()
    sock = keys.client(ctx.socket(zmq.REQ))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(DB_PROTOCOL.encode(Ping()))
        if not sock.poll(DEADLINE_MS):
            return False
        return isinstance(DB_PROTOCOL.decode(sock.recv()), Pong)
    finally:
        sock.close()
        ctx.term()


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE_MS / 1000) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def keeper_answers(address: str) -> bool:
    """The keeper (or a ZooKeeper) answers ``ruok`` with ``imok``; ``address`` is host:port."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=DEADLINE_MS / 1000) as sock:
            sock.sendall(b"ruok")
            return sock.recv(4) == b"imok"
    except (OSError, ValueError):
        return False


def main() -> None:
    kind, address = sys.argv[1], sys.argv[2]
    check = {"db": db_answers, "http": http_answers, "keeper": keeper_answers}[kind]
    sys.exit(0 if check(address) else 1)


if __name__ == "__main__":
    main()
