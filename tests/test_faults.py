"""Faults injected with real signals into a running cluster: no acknowledged call is lost."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .conftest import start_cluster
from .support import Api, targz

# echoes its params after a pause: each call's result says which call it was; while it
# sleeps, a file in its output folder says which sandbox it sleeps in
SLOW_ECHO = """
import time

import fum

def handle(params):
    pause = params.get("pause", 0.1)
    fum.output_path(f"running-{pause}").touch()
    time.sleep(pause)
    return params
"""


async def deploy_slow_echo(api: Api, name: str = "slow") -> str:
    await api.runtime("pyh")
    status, body = await api.deploy(name, "pyh", targz({"main.py": SLOW_ECHO}))
    assert status in (200, 201), body
    return name


async def submit(api: Api, name: str, params: list[dict[str, object]]) -> list[int]:
    calls = [{"function": name, "params": p} for p in params]
    status, body = await api.request("POST", "/v1/calls", json={"calls": calls})
    assert status == 202, body
    return list(body["callNums"])


async def wait_all(api: Api, nums: list[int], timeout: float = 120) -> list[dict[str, object]]:
    status, body = await api.request(
        "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": timeout}
    )
    assert status == 200 and body["pending"] == [], body["pending"][:10]
    return list(body["done"])


@pytest.fixture
async def two_workers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory, workers=2, preload="none", policy="round-robin")
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_worker_killed_halfway_loses_no_call(two_workers: LocalCluster) -> None:
    async with aiohttp.ClientSession(two_workers.url) as session:
        api = Api(session)
        name = await deploy_slow_echo(api)
        nums = await submit(api, name, [{"i": i, "pause": 0.1} for i in range(200)])
        # halfway: half of them finished, node 1 among the finishers (its first sandbox
        # may start late on a loaded machine), then node 1 dies without a word
        while True:
            _, body = await api.request(
                "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 0}
            )
            if len(body["done"]) >= 100 and {c["nodeId"] for c in body["done"]} == {0, 1}:
                break
            await asyncio.sleep(0.05)
        assert body["pending"], "too late: every call was done before the kill"
        two_workers.stop_process("worker-1", signal.SIGKILL)
        done = await wait_all(api, nums)
    assert len(done) == 200
    for i, call in enumerate(done):  # one result each, and the right one
        assert call["status"] == "DONE" and call["result"] == {"i": i, "pause": 0.1}, call
    assert {c["nodeId"] for c in done} == {0, 1}
    assert any(c["attempts"] > 1 for c in done)  # some ran again on node 0


def sandbox_pids(cluster: LocalCluster, pause: str) -> list[int]:
    """Processes of the process driver's sandbox running SLOW_ECHO's call of ``pause``."""
    pids = []
    for marker in (cluster.data_dir / "node-0" / "sandboxes").glob(f"*/output/running-{pause}"):
        code = marker.parent.parent / "code"
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "cwd") == str(code):
                        pids.append(int(entry.name))
                except OSError:
                    continue
    return pids


async def test_sandbox_killed_mid_call_is_retried(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = start_cluster(tmp_path_factory, preload="none")
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            name = await deploy_slow_echo(api)
            _, warm = await api.invoke(name, {"pause": 0})
            assert warm["status"] == "DONE"
            [num] = await submit(api, name, [{"pause": 2.5}])
            for _ in range(200):
                if pids := sandbox_pids(cluster, "2.5"):
                    break
                await asyncio.sleep(0.05)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            [call] = await wait_all(api, [num], 60)
            assert call["status"] == "DONE" and call["result"] == {"pause": 2.5}
            assert call["attempts"] == 2
            _, after = await api.invoke(name, {"pause": 0})
            assert after["status"] == "DONE"
    finally:
        cluster.stop()


async def test_api_killed_and_restarted_with_calls_pending(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cluster = start_cluster(tmp_path_factory, preload="none")
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            name = await deploy_slow_echo(api)
            nums = await submit(api, name, [{"i": i, "pause": 0.2} for i in range(40)])
        cluster.stop_process("api", signal.SIGKILL)
        cluster.start_api()
        cluster.wait_ready(30)
        async with aiohttp.ClientSession(cluster.url) as session:
            done = await wait_all(Api(session), nums)
        assert all(c["status"] == "DONE" for c in done), [
            (c["callNum"], c["status"], c["error"]) for c in done if c["status"] != "DONE"
        ]
        assert [c["result"]["i"] for c in done] == list(range(40))  # type: ignore[index]
    finally:
        cluster.stop()


async def test_db_killed_and_restarted_under_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = start_cluster(tmp_path_factory, preload="function")
    accepted: list[int] = []
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            name = await deploy_slow_echo(api)
            await api.wait_nodes(lambda n: n[0]["idle"].get(name, 0) >= 1)

            async def load() -> None:
                for i in range(300):
                    try:
                        status, body = await api.request(
                            "POST",
                            "/v1/calls",
                            json={"calls": [{"function": name, "params": {"i": i, "pause": 0}}]},
                        )
                    except aiohttp.ClientError:
                        continue
                    if status == 202:  # acknowledged: must not be lost
                        accepted.extend(body["callNums"])
                    await asyncio.sleep(0.005)

            loading = asyncio.ensure_future(load())
            while len(accepted) < 50:
                await asyncio.sleep(0.01)
            cluster.stop_process("db", signal.SIGKILL)
            await asyncio.sleep(0.5)  # calls keep arriving while the db is down
            cluster.start_db()
            await loading
            done = await wait_all(api, accepted)
        assert len(accepted) > 100
        assert all(c["status"] == "DONE" for c in done)
        assert len({c["callNum"] for c in done}) == len(accepted)
    finally:
        cluster.stop()
