"""Calls made in the db by someone other than the api (a workflow's next steps, a
trigger's action) reach a worker: handed to the api (``PlaceCalls``), or found by its
sweep when whoever made them died before handing them over; placed once either way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import zmq
import zmq.asyncio

from fum_cli.local import LocalCluster
from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.models import Call, NewCall
from services.common.node_protocol import (
    NODE_PROTOCOL,
    CatalogSynced,
    Dispatch,
    PlaceCalls,
    Register,
    Registered,
)
from services.common.protocol import Message
from services.common.rpc import EVENT

from .conftest import start_cluster
from .support import Api

SWEEP = 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, env={"FUM_SWEEP_INTERVAL": str(SWEEP)})
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def db(cluster: LocalCluster) -> AsyncIterator[DbClient]:
    ctx = zmq.asyncio.Context()
    client = DbClient(ctx, f"tcp://127.0.0.1:{cluster.db_port}", ClusterKeys.load(cluster.keys_dir))
    try:
        yield client
    finally:
        await client.close()
        ctx.destroy(linger=0)


async def made_in_the_db(db: DbClient, function: str, count: int) -> list[Call]:
    """Calls stored PENDING as a workflow continuation would store them: not by the api."""
    now = time.time()
    new = [
        NewCall(uuid=uuid.uuid4().hex, func_name=function, params=b'{"i": %d}' % i, created_at=now)
        for i in range(count)
    ]
    return await db.create_calls(new)


async def test_calls_no_one_handed_over_are_swept_and_run(
    cluster: LocalCluster, db: DbClient
) -> None:
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        echo = await api.handler_function("echo", "pyh")
        calls = await made_in_the_db(db, echo, 5)
        done = [await api.wait_call(c.call_num, timeout=10 * SWEEP + 30) for c in calls]
    assert [(c["status"], c["result"], c["attempts"]) for c in done] == [
        ("DONE", {"i": i}, 1) for i in range(5)
    ]


class FakeNode:
    """A DEALER that registers as a node, to see what the api dispatches to it."""

    def __init__(
        self, ctx: zmq.asyncio.Context, endpoint: str, node_id: int, keys: ClusterKeys
    ) -> None:
        self.sock = keys.client(ctx.socket(zmq.DEALER))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, str(node_id).encode())
        self.sock.connect(endpoint)
        self.node_id = node_id

    async def register(self) -> None:
        request = Register(node_id=self.node_id, capacity=4, preload="none", driver="process")
        await self.sock.send_multipart([b"r1", NODE_PROTOCOL.encode(request)])
        while True:
            frames = await asyncio.wait_for(self.sock.recv_multipart(), 10)
            kinds = [type(NODE_PROTOCOL.decode(f)) for f in frames[1:]]
            if Registered in kinds:
                return
            assert kinds == [CatalogSynced], kinds

    def send(self, message: Message) -> asyncio.Future[None]:
        return self.sock.send_multipart([EVENT, NODE_PROTOCOL.encode(message)])  # type: ignore[return-value]

    async def dispatches(self, within: float) -> list[int]:
        """The call numbers dispatched to this node within ``within`` seconds."""
        nums: list[int] = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames = await asyncio.wait_for(self.sock.recv_multipart(), left)
            except TimeoutError:
                break
            for payload in frames[1:]:
                message = NODE_PROTOCOL.decode(payload)
                if isinstance(message, Dispatch):
                    nums.append(message.call.call_num)
        return nums


async def test_calls_handed_over_are_placed_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # no worker of its own: the only node is the fake one, which sees every dispatch
    cluster = start_cluster(tmp_path_factory, workers=0, env={"FUM_SWEEP_INTERVAL": "600"})
    ctx = zmq.asyncio.Context()
    keys = ClusterKeys.load(cluster.keys_dir)
    db = DbClient(ctx, f"tcp://127.0.0.1:{cluster.db_port}", keys)
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime("pyh")
            echo = await api.handler_function("echo", "pyh")
        node = FakeNode(ctx, f"tcp://127.0.0.1:{cluster.node_port}", 7, keys)
        stranger = FakeNode(ctx, f"tcp://127.0.0.1:{cluster.node_port}", 8, keys)
        await node.register()
        calls = await made_in_the_db(db, echo, 3)
        await stranger.send(PlaceCalls(calls=calls))  # not registered: refused
        assert await node.dispatches(within=1.0) == []
        await node.send(PlaceCalls(calls=calls))
        await node.send(PlaceCalls(calls=calls))  # handed over twice: placed once
        assert sorted(await node.dispatches(within=2.0)) == [c.call_num for c in calls]
    finally:
        await db.close()
        ctx.destroy(linger=0)
        cluster.stop()
