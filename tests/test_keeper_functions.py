"""Functions reach the keeper through ``fum.keeper()`` (both drivers), or a real ZooKeeper
ensemble when the workers' FUM_KEEPER_HOSTS names one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout

from fum_cli.local import LocalCluster, free_port

from .keeper import kazoo_client, start_server
from .support import Api, targz, unique

COUNTER = """
import fum

def handle(params):
    counter = fum.keeper().Counter(params["path"])
    counter += 1
    return "counted"
"""

LOCKER = """
import fum

held = {}

def handle(params):
    path, op = params["path"], params["op"]
    if op == "acquire":
        held[path] = fum.keeper().Lock(path, params["me"])
        return held[path].acquire(timeout=10)
    if op == "release":
        held.pop(path).release()
        return "released"
    return sorted(held)
"""

ECHO_TREE = """
import fum

def handle(params):
    client = fum.keeper()
    client.create(params["path"], b"from a function", makepath=True)
    data, stat = client.get(params["path"])
    return {"data": data.decode(), "version": stat.version, "hosts": client.hosts}
"""


@pytest.fixture
def kazoo(cluster: LocalCluster) -> Iterator[KazooClient]:
    with kazoo_client(cluster.keeper_hosts) as client:
        yield client


async def deploy(api: Api, source: str, **fields: object) -> str:
    await api.runtime("pyhandler")
    name = unique("keeper-fn")
    status, body = await api.deploy(name, "pyhandler", targz({"main.py": source}), **fields)
    assert status == 201, body
    return name


async def test_fifty_concurrent_calls_count_exactly(api: Api, kazoo: KazooClient) -> None:
    name = await deploy(api, COUNTER, timeout=60)
    path = f"/count-{uuid.uuid4().hex[:8]}"
    answers = await asyncio.gather(*(api.invoke(name, {"path": path}) for _ in range(50)))
    for status, call in answers:
        assert status in (200, 202), call
        if status == 202:  # still queued behind the others when the blocking wait ended
            call = await api.wait_call(call["callNum"], timeout=120)
        assert call["status"] == "DONE", call
    assert kazoo.Counter(path).value == 50


async def test_a_lock_held_across_calls(api: Api, kazoo: KazooClient) -> None:
    name = await deploy(api, LOCKER, maxContainers=1)
    path = f"/lock-{uuid.uuid4().hex[:8]}"
    status, call = await api.invoke(name, {"path": path, "op": "acquire", "me": "fn"})
    assert status == 200 and call["result"] is True, call
    # between calls the function's session still holds it
    status, call = await api.invoke(name, {"path": path, "op": "holding"})
    assert status == 200 and call["result"] == [path], call
    assert kazoo.Lock(path).contenders() == ["fn"]
    with pytest.raises(LockTimeout):
        await asyncio.to_thread(kazoo.Lock(path, "test").acquire, timeout=0.5)
    status, call = await api.invoke(name, {"path": path, "op": "release"})
    assert status == 200, call
    lock = kazoo.Lock(path, "test")
    assert await asyncio.to_thread(lock.acquire, timeout=10)
    lock.release()


async def test_health_names_the_keeper(api: Api, cluster: LocalCluster) -> None:
    status, health = await api.request("GET", "/healthz")
    assert status == 200 and health["keeper"] == cluster.keeper_hosts


async def test_functions_use_a_real_zookeeper_when_the_workers_name_one(
    tmp_path: Path,
) -> None:
    zookeeper = start_server("zookeeper", tmp_path / "zookeeper")
    cluster = LocalCluster(tmp_path / "cluster", port=0, external_keeper=zookeeper.hosts)
    try:
        cluster.start(timeout=60)
        assert "keeper" not in cluster.procs  # no keeper of fum's own
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            name = await deploy(api, ECHO_TREE)
            path = f"/from-fn-{uuid.uuid4().hex[:8]}/node"
            status, call = await api.invoke(name, {"path": path})
            assert status == 200 and call["status"] == "DONE", call
        with kazoo_client(zookeeper.hosts) as direct:
            assert direct.get(path)[0] == b"from a function"
    finally:
        cluster.stop()
        zookeeper.stop()


def test_fum_works_without_kazoo_until_keeper_is_called() -> None:
    script = """
import sys
sys.modules["kazoo"] = None  # as if kazoo were not installed
import fum
try:
    fum.keeper()
except fum.NoKeeper as exc:
    print("no keeper:", exc)
"""
    env = {**os.environ, "FUM_KEEPER_HOSTS": "127.0.0.1:1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "needs kazoo" in out.stdout
    env.pop("FUM_KEEPER_HOSTS")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert "FUM_KEEPER_HOSTS is not set" in out.stdout


async def test_the_sdk_finds_the_keeper_through_the_api(cluster: LocalCluster) -> None:
    from fum_client import AsyncClient, Client, NoKeeper

    path = f"/sdk-{uuid.uuid4().hex[:8]}"
    with Client(cluster.url) as api:
        client = await asyncio.to_thread(api.keeper)
        try:
            client.create(path, b"from the sdk")
            assert client.hosts == [("127.0.0.1", cluster.keeper_port)]
        finally:
            client.stop()
            client.close()
        with pytest.raises(NoKeeper, match="did not answer"):
            await asyncio.to_thread(api.keeper, f"127.0.0.1:{free_port()}", 1.0)
    async with AsyncClient(cluster.url) as aio:
        client = await aio.keeper()
        try:
            assert client.get(path)[0] == b"from the sdk"
        finally:
            client.stop()
            client.close()
