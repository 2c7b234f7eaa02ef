"""The preload policies: what is warm before a function's first call, on a real worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from .conftest import start_cluster
from .support import Api


async def cluster_api(tmp: pytest.TempPathFactory, preload: str, driver: str) -> AsyncIterator[Api]:
    cluster = start_cluster(tmp, preload=preload, driver=driver)
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            yield Api(session)
    finally:
        cluster.stop()


@pytest.fixture
async def api_function(tmp_path_factory: pytest.TempPathFactory, driver: str) -> AsyncIterator[Api]:
    async for api in cluster_api(tmp_path_factory, "function", driver):
        yield api


@pytest.fixture
async def api_none(tmp_path_factory: pytest.TempPathFactory, driver: str) -> AsyncIterator[Api]:
    async for api in cluster_api(tmp_path_factory, "none", driver):
        yield api


@pytest.fixture
async def api_runtime(tmp_path_factory: pytest.TempPathFactory, driver: str) -> AsyncIterator[Api]:
    async for api in cluster_api(tmp_path_factory, "runtime", driver):
        yield api


async def test_function_preload_sets_up_before_the_first_call(api_function: Api) -> None:
    api = api_function
    await api.runtime("pyh")
    name = await api.handler_function("echo", "pyh")
    await api.wait_nodes(lambda nodes: nodes[0]["idle"].get(name, 0) >= 1)
    status, call = await api.invoke(name, {"first": True})
    assert status == 200 and call["status"] == "DONE"
    assert call["start"] == "warm" and call["initMs"] == 0  # no set-up on the call's path


async def test_none_preload_starts_a_sandbox_on_the_first_call(api_none: Api) -> None:
    api = api_none
    await api.runtime("pyh")
    name = await api.handler_function("echo", "pyh")
    nodes = await api.wait_nodes(lambda nodes: True)
    assert nodes[0]["idle"] == {} and nodes[0]["generic"] == {}
    _, first = await api.invoke(name, {})
    assert first["status"] == "DONE" and first["start"] == "cold" and first["initMs"] > 0
    _, second = await api.invoke(name, {})
    assert second["start"] == "warm"  # and it stays warm afterwards


async def test_runtime_preload_specialises_a_generic_sandbox(api_runtime: Api) -> None:
    api = api_runtime
    await api.runtime("pyh")
    await api.wait_nodes(lambda nodes: nodes[0]["generic"].get("pyh", 0) >= 1)
    name = await api.handler_function("echo", "pyh")
    _, first = await api.invoke(name, {})
    assert first["status"] == "DONE" and first["start"] == "specialized"
    _, second = await api.invoke(name, {})
    assert second["start"] == "warm"
    # a fresh generic sandbox replaces the one that was specialised
    await api.wait_nodes(lambda nodes: nodes[0]["generic"].get("pyh", 0) >= 1)
