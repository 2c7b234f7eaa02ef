"""CURVE on the control plane: the cluster's keys, and the ZAP handler that checks peers.

The db's ROUTER and the api's node ROUTER are CURVE servers; the api's and the workers'
DEALERs (and tools such as the health check) are CURVE clients. A keys folder
(``FUM_KEYS_DIR``) holds, in ZeroMQ's certificate format (``zmq.auth``):

- ``server.key_secret``: the servers' key pair (needed where the db or the api runs),
  ``server.key`` its public half (needed everywhere: clients check the server with it);
- ``client.key_secret``: the key pair this host's processes connect with, ``client.key``
  its public half;
- ``authorized/*.key``: more client public keys the servers accept (a node that has a
  key of its own). The servers always accept their own folder's client key.

A service makes what is missing at its first start (``ClusterKeys.open``): both pairs in
an empty folder (a new cluster), or only a client pair beside a copied ``server.key`` (a
node with a key of its own). docs/SECURITY.md and docs/DEPLOY.md say how keys reach
other hosts.

    python -m services.common.curve DIR    # make a cluster's keys in DIR, say what to copy
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog
import zmq
from zmq.auth import create_certificates, load_certificate
from zmq.auth.asyncio import AsyncioAuthenticator

log = structlog.get_logger()

SERVER, CLIENT = "server", "client"
AUTHORIZED = "authorized"
DEFAULT_DIR = ".fum/keys"
REFUSED_LOG_EVERY = 60.0  # seconds between two warnings about the same refused key

S = TypeVar("S", bound=zmq.Socket)


class KeysSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a tool that talks to the control plane finds its keys (``FUM_KEYS_DIR``)."""

    keys_dir: str = DEFAULT_DIR


def _secret(folder: Path, name: str) -> Path:
    return folder / f"{name}.key_secret"


def _public(folder: Path, name: str) -> Path:
    return folder / f"{name}.key"


def _has_server_key(folder: Path) -> bool:
    return _public(folder, SERVER).exists() or _secret(folder, SERVER).exists()


def _make_pair(folder: Path, name: str) -> bytes:
    """A new key pair ``name`` in ``folder``; its public key. Each file appears whole (made
    aside, then renamed), the secret last and readable by its owner only."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".new-") as aside:
        public, secret = create_certificates(aside, name)
        os.chmod(secret, 0o600)
        os.replace(public, _public(folder, name))
        os.replace(secret, _secret(folder, name))
    return load_certificate(_public(folder, name))[0]


def make_missing(folder: Path) -> list[str]:
    """Make the key pairs ``folder`` lacks; the names of those made. A folder that has
    them all is only read (it may be read-only: Swarm secrets); processes that start
    together on one folder (compose's volume) make one set between them."""
    if _has_server_key(folder) and _secret(folder, CLIENT).exists():
        return []
    made = []
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _has_server_key(folder):
                _make_pair(folder, SERVER)
                (folder / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
                made.append(SERVER)
            if not _secret(folder, CLIENT).exists():
                public = _make_pair(folder, CLIENT)
                made.append(CLIENT)
    except OSError as exc:
        raise SystemExit(f"cannot make the control-plane keys in {folder}: {exc}") from None
    if made == [CLIENT]:  # beside a copied server key: a node of an existing cluster
        log.warning(
            "curve.client_key_made",
            folder=str(folder),
            public_key=public.decode(),
            hint="the db and the api accept it once client.key is in their keys "
            "folder's authorized/ (docs/DEPLOY.md)",
        )
    if SERVER in made:
        log.warning(
            "curve.cluster_keys_made",
            folder=str(folder),
            hint="a new cluster's keys; a host that joins an existing cluster needs "
            "that cluster's keys instead (docs/DEPLOY.md)",
        )
    return made


@dataclass(frozen=True)
class ClusterKeys:
    """The keys one process of the control plane uses (z85 text, as ZeroMQ takes them)."""

    folder: Path
    server_public: bytes
    server_secret: bytes | None  # None on a host that only connects (a worker's)
    client_public: bytes
    client_secret: bytes

    @classmethod
    def open(cls, folder: Path | str, serve: bool = False) -> ClusterKeys:
        """A service's keys at its start: made first where the folder lacks them."""
        make_missing(Path(folder))
        return cls.load(folder, serve)

    @classmethod
    def load(cls, folder: Path | str, serve: bool = False) -> ClusterKeys:
        """Read the keys in ``folder``; exit with a message saying what is missing.
        ``serve``: this process binds a server (the db, the api)."""
        folder = Path(folder)
        try:
            server_public, server_secret = load_certificate(
                _secret(folder, SERVER)
                if _secret(folder, SERVER).exists()
                else _public(folder, SERVER)
            )
            client_public, client_secret = load_certificate(_secret(folder, CLIENT))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"control-plane keys in {folder}: {exc} (docs/DEPLOY.md)") from None
        if client_secret is None:
            raise SystemExit(f"{_secret(folder, CLIENT)} holds no secret key")
        if serve and server_secret is None:
            raise SystemExit(
                f"{_secret(folder, SERVER)} is missing: the db and the api serve with the "
                "cluster's server key pair (docs/DEPLOY.md)"
            )
        return cls(folder, server_public, server_secret, client_public, client_secret)

    def client(self, sock: S) -> S:
        """Make ``sock`` (before it connects) a CURVE client of the control plane."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.client_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.client_secret)
        return sock

    def server(self, sock: S) -> S:
        """Make ``sock`` (before it binds) a CURVE server of the control plane; its peers
        are checked by the ``authenticator`` of its context."""
        assert self.server_secret is not None, "loaded with serve=True"
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.server_secret)
        return sock


class KnownClients:
    """The ZAP credentials check: a client key is known if it is the servers' folder's own
    or one in its ``authorized/`` as it is now (read again when it has changed)."""

    def __init__(self, keys: ClusterKeys) -> None:
        self._own = keys.client_public
        self._folder = keys.folder / AUTHORIZED
        self._read_at: int | None = None  # the folder's mtime when it was read
        self._authorized: frozenset[bytes] = frozenset()
        self._refused: dict[bytes, float] = {}  # key -> when it was last logged

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the client with this public key (z85) may connect (zmq.auth's API)."""
        if key == self._own:
            return True
        self._read()  # a stat per handshake: a key taken out is refused from then on
        if key in self._authorized:
            return True
        now = time.monotonic()
        if now - self._refused.get(key, -REFUSED_LOG_EVERY) >= REFUSED_LOG_EVERY:
            self._refused[key] = now
            log.warning("curve.refused", public_key=key.decode(errors="replace"))
        return False

    def _read(self) -> None:
        try:
            mtime = self._folder.stat().st_mtime_ns
        except OSError:  # no such folder (Swarm's secrets): only the own key is known
            self._authorized, self._read_at = frozenset(), None
            return
        if mtime == self._read_at:
            return
        keys = set()
        for path in sorted(self._folder.glob("*.key")):
            try:
                keys.add(load_certificate(path)[0])
            except (OSError, ValueError) as exc:
                log.warning("curve.bad_authorized_key", path=str(path), error=str(exc))
        self._authorized, self._read_at = frozenset(keys), mtime


def authenticator(ctx: zmq.Context, keys: ClusterKeys) -> AsyncioAuthenticator:
    """Check every CURVE peer of ``ctx``'s server sockets, from now until ``stop()`` (start
    it before they bind): pyzmq's ZAP handler on the running event loop, with
    ``KnownClients`` as the check. A handshake, not a message, is what it costs."""
    auth = AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", KnownClients(keys))
    return auth


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m services.common.curve DIR")
    folder = Path(sys.argv[1])
    made = make_missing(folder)
    keys = ClusterKeys.load(folder)
    print(f"{folder}: {'made ' + ' and '.join(made) if made else 'had its keys already'}")
    print(f"server public key: {keys.server_public.decode()}")
    print(f"client public key: {keys.client_public.decode()}")
    print("db and api hosts: server.key_secret, client.key_secret; worker hosts: server.key,")
    print("client.key_secret (or a key of their own, in authorized/ here): docs/DEPLOY.md")


if __name__ == "__main__":
    main()
