"""CURVE on the control plane: the db and the api's node channel answer only known keys.

A real local cluster (process driver); peers on real sockets without the cluster's keys
(no CURVE, an unknown client key, a wrong server key) get nothing, while the cluster's
own processes go on working.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import zmq
import zmq.asyncio

from fum_cli.local import LocalCluster
from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.db_protocol import DB_PROTOCOL, Ping, Pong
from services.common.errors import Unavailable
from services.common.node_protocol import NODE_PROTOCOL, Register, Registered

from .conftest import start_cluster
from .support import Api

SILENCE = 1.5  # seconds a refused peer is given to get an answer it must not get


def stranger(keys: ClusterKeys, folder: Path) -> ClusterKeys:
    """Keys of a peer outside the cluster, that knows the server's public key."""
    public, secret = zmq.curve_keypair()
    return ClusterKeys(folder, keys.server_public, None, public, secret)


def wrong_server(keys: ClusterKeys) -> ClusterKeys:
    """The cluster's own client key, checking the server against a key that is not its."""
    public, _ = zmq.curve_keypair()
    return ClusterKeys(keys.folder, public, None, keys.client_public, keys.client_secret)


OUTSIDERS = ["no CURVE", "an unknown client key", "a wrong server key"]


def outsider(kind: str, keys: ClusterKeys) -> ClusterKeys | None:
    return {
        "no CURVE": None,
        "an unknown client key": stranger(keys, keys.folder),
        "a wrong server key": wrong_server(keys),
    }[kind]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, driver="process")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def keys(cluster: LocalCluster) -> ClusterKeys:
    return ClusterKeys.load(cluster.keys_dir)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


async def exchange(
    ctx: zmq.asyncio.Context,
    endpoint: str,
    keys: ClusterKeys | None,
    frames: list[bytes],
    identity: bytes | None = None,
    wait: float = SILENCE,
) -> list[list[bytes]]:
    """Send one message from a fresh DEALER; every message it receives within ``wait``."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        keys.client(sock)
    sock.connect(endpoint)
    received = []
    try:
        await sock.send_multipart(frames)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            if await sock.poll(left * 1000):
                received.append(await sock.recv_multipart())
    finally:
        sock.close()
    return received


def db_endpoint(cluster: LocalCluster) -> str:
    return f"tcp://127.0.0.1:{cluster.db_port}"


def node_endpoint(cluster: LocalCluster) -> str:
    return f"tcp://127.0.0.1:{cluster.node_port}"


@pytest.mark.parametrize("kind", OUTSIDERS)
async def test_the_db_answers_no_peer_without_a_known_key(
    cluster: LocalCluster, keys: ClusterKeys, ctx: zmq.asyncio.Context, kind: str
) -> None:
    ping = [b"\x01", DB_PROTOCOL.encode(Ping())]
    assert await exchange(ctx, db_endpoint(cluster), outsider(kind, keys), ping) == []
    # the same request with the cluster's keys is answered
    (reply,) = await exchange(ctx, db_endpoint(cluster), keys, ping, wait=0.5)
    assert isinstance(DB_PROTOCOL.decode(reply[-1]), Pong)


def register(node_id: int) -> list[bytes]:
    message = Register(node_id=node_id, capacity=8, preload="runtime", driver="process")
    return [b"\x01", NODE_PROTOCOL.encode(message)]


@pytest.mark.parametrize("kind", OUTSIDERS)
async def test_no_peer_without_a_known_key_registers_as_a_node(
    cluster: LocalCluster, keys: ClusterKeys, ctx: zmq.asyncio.Context, kind: str
) -> None:
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("py")
        echo = await api.handler_function("echo", "py")
        peer = outsider(kind, keys)
        # As a new node, and as node 0 (the registered worker's identity, which the api's
        # ROUTER hands over to a peer that reconnects with it).
        for node_id in (77, 0):
            identity = str(node_id).encode()
            got = await exchange(ctx, node_endpoint(cluster), peer, register(node_id), identity)
            assert got == []
        _, nodes = await api.request("GET", "/v1/nodes")
        assert [n["nodeId"] for n in nodes["items"]] == [0]
        # the registered worker still gets the calls, and runs them
        status, call = await api.invoke(echo, {"still": "works"})
        assert status == 200 and call["status"] == "DONE" and call["nodeId"] == 0, call
        assert call["result"] == {"still": "works"}


async def test_a_peer_with_the_cluster_keys_registers(
    cluster: LocalCluster, keys: ClusterKeys, ctx: zmq.asyncio.Context
) -> None:
    """The probe above can register: with the cluster's keys the api answers it (and
    sends it the catalogue)."""
    got = await exchange(ctx, node_endpoint(cluster), keys, register(78), b"78", wait=0.5)
    replies = [NODE_PROTOCOL.decode(frames[-1]) for frames in got if frames[0] == b"\x01"]
    assert len(replies) == 1 and isinstance(replies[0], Registered), got
    async with aiohttp.ClientSession(cluster.url) as session:  # silent now: it dies
        await Api(session).wait_nodes(lambda nodes: [n["nodeId"] for n in nodes] == [0])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("an unknown client key", "refused this process's client key"),
        ("a wrong server key", "wrong server key"),
    ],
)
async def test_a_refused_client_says_why(
    cluster: LocalCluster, keys: ClusterKeys, ctx: zmq.asyncio.Context, kind: str, reason: str
) -> None:
    peer = outsider(kind, keys)
    assert peer is not None
    with pytest.raises(Unavailable, match=reason):
        await ping(ctx, db_endpoint(cluster), peer, SILENCE)


async def ping(ctx: zmq.asyncio.Context, endpoint: str, keys: ClusterKeys, deadline: float) -> None:
    """A Ping from a fresh ``DbClient`` (a new connection, so a new handshake)."""
    client = DbClient(ctx, endpoint, keys)
    try:
        await client.ping(deadline=deadline)
    finally:
        await client.close()


async def test_a_node_key_put_in_authorized_is_accepted_without_a_restart(
    cluster: LocalCluster, ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """A node with a key of its own (docs/DEPLOY.md): it is given the server's public key,
    makes its client key at its first start, and is let in once that key is authorised."""
    node = copied(ClusterKeys.load(cluster.keys_dir), tmp_path / "node-keys", "server.key")
    own = ClusterKeys.open(node)
    assert sorted(p.name for p in node.glob("*.key*")) == [
        "client.key",
        "client.key_secret",
        "server.key",
    ]
    assert own.server_secret is None
    with pytest.raises(Unavailable, match="refused"):
        await ping(ctx, db_endpoint(cluster), own, SILENCE)
    log = (cluster.data_dir / "logs" / "db.log").read_text()
    assert own.client_public.decode() in log  # the db said which key it refused

    authorized = cluster.keys_dir / "authorized" / "node-9.key"
    shutil.copy(node / "client.key", authorized)
    try:
        await ping(ctx, db_endpoint(cluster), own, 5.0)
    finally:
        authorized.unlink()
    # taken away again: a new connection is refused
    with pytest.raises(Unavailable, match="refused"):
        await ping(ctx, db_endpoint(cluster), own, SILENCE)


def health(cluster: LocalCluster, keys_dir: Path) -> int:
    env = {**os.environ, "FUM_KEYS_DIR": str(keys_dir)}
    argv = [sys.executable, "-m", "services.common.health", "db", db_endpoint(cluster)]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_the_health_check_asks_the_db_with_the_keys(cluster: LocalCluster, tmp_path: Path) -> None:
    assert health(cluster, cluster.keys_dir) == 0
    ClusterKeys.open(tmp_path / "other")  # another cluster's keys
    assert health(cluster, tmp_path / "other") == 1


def test_processes_that_start_together_make_one_set_of_keys(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    argv = [sys.executable, "-m", "services.common.curve", str(folder)]
    starts = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60)[0] for p in starts]
    assert all(p.returncode == 0 for p in starts)
    servers = {line for out in outputs for line in out.splitlines() if "server public" in line}
    clients = {line for out in outputs for line in out.splitlines() if "client public" in line}
    assert len(servers) == len(clients) == 1, outputs
    assert sum("made server and client" in out for out in outputs) == 1, outputs
    keys = ClusterKeys.load(folder, serve=True)
    assert servers == {f"server public key: {keys.server_public.decode()}"}
    assert (folder / "server.key_secret").stat().st_mode & 0o077 == 0
    assert (folder / "client.key_secret").stat().st_mode & 0o077 == 0


def copied(keys: ClusterKeys, folder: Path, *names: str) -> Path:
    """A folder holding only these files of ``keys``' folder (what one host is given)."""
    folder.mkdir()
    for name in names:
        shutil.copy(keys.folder / name, folder / name)
    return folder


def test_a_folder_that_holds_its_keys_is_only_read(tmp_path: Path) -> None:
    """As Swarm's secrets are: read-only files, nothing else in the folder."""
    made = ClusterKeys.open(tmp_path / "made")
    secrets = copied(made, tmp_path / "secrets", "server.key_secret", "client.key_secret")
    keys = ClusterKeys.open(secrets, serve=True)
    assert sorted(p.name for p in secrets.iterdir()) == ["client.key_secret", "server.key_secret"]
    assert (keys.server_public, keys.server_secret, keys.client_secret) == (
        made.server_public,
        made.server_secret,
        made.client_secret,
    )


def test_a_server_without_the_server_secret_stops_and_says_so(tmp_path: Path) -> None:
    made = ClusterKeys.open(tmp_path / "made")
    worker = copied(made, tmp_path / "worker", "server.key", "client.key_secret")
    assert ClusterKeys.open(worker).server_secret is None  # enough to connect
    with pytest.raises(SystemExit, match=r"server\.key_secret is missing"):
        ClusterKeys.open(worker, serve=True)
