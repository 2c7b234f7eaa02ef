"""Services restarted under a running cluster: the others reconnect and go on."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .conftest import start_cluster
from .support import Api


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory)
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_worker_registers_again_after_the_api_restarts(fresh: LocalCluster) -> None:
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        echo = await api.handler_function("echo", "pyh")
        _, call = await api.invoke(echo, {"before": 1})
        assert call["status"] == "DONE"
    fresh.stop_process("api", signal.SIGKILL)
    fresh.start_api()
    fresh.wait_ready(30)  # the worker is back in /v1/nodes by itself
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        status, after = await api.invoke(echo, {"after": 1})
        assert status == 200 and after["result"] == {"after": 1}
        status, before = await api.request("GET", f"/v1/calls/{call['callNum']}")
        assert status == 200 and before["status"] == "DONE"


@pytest.mark.parametrize(("policy", "kept"), [("keep", True), ("wipe", False)])
async def test_db_restart_policy(fresh: LocalCluster, policy: str, kept: bool) -> None:
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        echo = await api.handler_function("echo", "pyh")
        _, call = await api.invoke(echo, {"n": 1})
    # the api mirrors the catalogue in memory: restart the db and the api together
    fresh.stop_process("api")
    fresh.stop_process("db", signal.SIGKILL)
    fresh.start_db(policy)
    fresh.start_api()
    fresh.wait_ready(30)
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        status, stored = await api.request("GET", f"/v1/calls/{call['callNum']}")
        _, functions = await api.request("GET", "/v1/functions")
        _, runtimes = await api.request("GET", "/v1/runtimes")
    if kept:
        assert status == 200 and stored["result"] == {"n": 1}
        assert [f["name"] for f in functions["items"]] == [echo]
        assert [r["name"] for r in runtimes["items"]] == ["pyh"]
    else:
        assert status == 404 and functions["items"] == [] and runtimes["items"] == []


async def test_a_build_under_way_when_the_api_restarts_is_asked_for_again(
    fresh: LocalCluster,
) -> None:
    from .test_builds import WHEEL, package_with, pip_runtime

    spec = pip_runtime()
    spec["dependencies"] = "sleep 2 && " + spec["dependencies"]
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        await api.runtime("pipslow", spec)
        status, body = await api.deploy("dep", "pipslow", package_with(f"./wheels/{WHEEL}\n"))
        assert status == 201 and body["build"]["status"] == "building", body
    fresh.stop_process("api", signal.SIGKILL)
    fresh.start_api()
    fresh.wait_ready(30)
    async with aiohttp.ClientSession(fresh.url) as session:
        api = Api(session)
        _, function = await api.request("GET", "/v1/functions/dep", params={"wait": 30})
        build = function["build"]
        assert build["status"] == "ready" and build["runs"] == 2, build
        status, call = await api.invoke("dep", {})
        assert status == 200 and call["result"]["value"] == "tiny", call
