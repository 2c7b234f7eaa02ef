"""Where calls go and how many sandboxes there are: policies, limits, scaling, eviction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .conftest import start_cluster
from .support import Api, targz

SLOW_ECHO = """
import time

def handle(params):
    time.sleep(params.get("pause", 0))
    return params
"""


@asynccontextmanager
async def running(
    tmp: pytest.TempPathFactory, **options: object
) -> AsyncIterator[tuple[LocalCluster, Api]]:
    cluster = start_cluster(tmp, **options)
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime("pyh")
            yield cluster, api
    finally:
        cluster.stop()


async def deploy(api: Api, name: str, **limits: object) -> str:
    status, body = await api.deploy(name, "pyh", targz({"main.py": SLOW_ECHO}), **limits)
    assert status in (200, 201), body
    return name


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_round_robin_alternates_nodes(tmp_path_factory: pytest.TempPathFactory) -> None:
    async with running(tmp_path_factory, workers=2, policy="round-robin", preload="none") as (
        _,
        api,
    ):
        await deploy(api, "f")
        nodes = [(await api.invoke("f", {}))[1]["nodeId"] for _ in range(6)]
    assert nodes in ([0, 1] * 3, [1, 0] * 3)


async def test_least_loaded_avoids_the_busy_node(tmp_path_factory: pytest.TempPathFactory) -> None:
    async with running(tmp_path_factory, workers=2, policy="least-loaded", preload="none") as (
        _,
        api,
    ):
        await deploy(api, "f")
        _, long = await api.invoke("f", {"pause": 4}, blocking=False)
        await api.wait_nodes(lambda n: sum(x["inFlight"] for x in n) == 1)
        busy = next(
            n["nodeId"]
            for n in (await api.request("GET", "/v1/nodes"))[1]["items"]
            if n["inFlight"]
        )
        nodes = [(await api.invoke("f", {}))[1]["nodeId"] for _ in range(3)]
        assert nodes == [1 - busy] * 3
        assert (await api.wait_call(long["callNum"]))["nodeId"] == busy


async def test_warm_affinity_follows_the_warm_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, workers=2, policy="warm-affinity", preload="none") as (
        _,
        api,
    ):
        await deploy(api, "long")
        await deploy(api, "f")
        _, long = await api.invoke("long", {"pause": 3}, blocking=False)
        await api.wait_nodes(lambda n: sum(x["inFlight"] for x in n) == 1)
        _, first = await api.invoke("f", {})  # the other node: the busy one is not warm for f
        warm_node = first["nodeId"]
        await api.wait_call(long["callNum"])
        # once both nodes are idle, f still goes where it is warm
        await api.wait_nodes(
            lambda n: all(x["inFlight"] == 0 for x in n) and n[warm_node]["idle"].get("f", 0) == 1
        )
        nodes = [(await api.invoke("f", {}))[1]["nodeId"] for _ in range(5)]
        assert nodes == [warm_node] * 5


async def test_queue_overflow_gets_429_and_memory_stays_bounded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, preload="function") as (cluster, api):
        await deploy(api, "f", concurrency=2, queue=50)
        await api.wait_nodes(lambda n: n[0]["idle"].get("f", 0) >= 1)
        api_pid = cluster.procs["api"].pid
        before = rss_kib(api_pid)
        accepted: list[int] = []
        refused = 0
        todo = iter(range(10_000))

        async def client() -> None:
            nonlocal refused
            for i in todo:
                async with api.session.post(
                    "/v1/functions/f/invoke?blocking=false", json={"i": i, "pause": 0.01}
                ) as response:
                    body = await response.json()
                    if response.status == 202:
                        accepted.append(body["callNum"])
                    else:
                        assert response.status == 429, body
                        assert body["error"]["code"] == "overloaded"
                        assert int(response.headers["Retry-After"]) >= 1
                        refused += 1

        await asyncio.gather(*(client() for _ in range(32)))
        after = rss_kib(api_pid)
        assert refused > 0 and len(accepted) + refused == 10_000
        _, body = await api.request(
            "POST", "/v1/calls/wait", json={"callNums": accepted, "timeout": 60}
        )
        assert body["pending"] == [] and all(c["status"] == "DONE" for c in body["done"])
        # the overflow held nothing: the api grew by less than 40 MiB over 10,000 requests
        assert after - before < 40 * 1024, (before, after)
        # at most concurrency + queue were ever held: 2 running + 50 waiting
        _, nodes = await api.request("GET", "/v1/nodes")
        assert nodes["items"][0]["inFlight"] == 0


async def test_scale_up_to_max_containers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three sandboxes kept (minWarm), six 1.5 s calls: the wait behind the three is longer
    than a start, so the node would start more, but maxContainers holds it at three."""
    async with running(tmp_path_factory, preload="none", capacity=8) as (_, api):
        await deploy(api, "f", maxContainers=3, minWarm=3)
        await api.wait_nodes(lambda n: n[0]["idle"].get("f") == 3)
        nums = []
        for i in range(6):
            _, call = await api.invoke("f", {"i": i, "pause": 1.5}, blocking=False)
            nums.append(call["callNum"])
        peak = 0
        for _ in range(60):
            _, body = await api.request("GET", "/v1/nodes")
            peak = max(peak, body["items"][0]["busy"])
            await asyncio.sleep(0.1)
        _, waited = await api.request(
            "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 60}
        )
        starts = sorted(c["start"] for c in waited["done"])
        assert starts == ["warm"] * 6  # the three sandboxes, each used twice
        assert peak == 3


async def test_idle_sandboxes_evicted_after_keep_warm(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, preload="none", env={"FUM_KEEP_WARM": "1"}) as (_, api):
        await deploy(api, "f")
        await deploy(api, "g", minWarm=1)
        await api.invoke("f", {})
        await api.wait_nodes(lambda n: n[0]["idle"].get("f") == 1)
        # f goes after keep_warm; g stays, for its min_warm
        await api.wait_nodes(lambda n: "f" not in n[0]["idle"] and n[0]["idle"].get("g") == 1)


async def test_a_full_node_evicts_the_least_recently_used(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with running(tmp_path_factory, preload="none", capacity=2) as (_, api):
        for name in ("a", "b", "c"):
            await deploy(api, name)
        await api.invoke("a", {})
        await api.invoke("b", {})
        await api.wait_nodes(lambda n: n[0]["idle"] == {"a": 1, "b": 1})
        _, call = await api.invoke("c", {})
        assert call["status"] == "DONE" and call["start"] == "cold"
        await api.wait_nodes(lambda n: n[0]["idle"] == {"b": 1, "c": 1})


async def burst_starts(api: Api, name: str, pause: float) -> list[str]:
    """How the sandboxes of eight simultaneous calls were found (after one call that
    specialises the runtime's generic sandbox, leaving it warm and telling the node how
    long the function's calls take and what a specialisation costs)."""
    await api.wait_nodes(lambda n: n[0]["generic"].get("pyh") == 1)
    status, first = await api.invoke(name, {"pause": pause})
    assert status == 200 and first["status"] == "DONE", first
    assert first["start"] == "specialized", first
    await api.wait_nodes(lambda n: n[0]["idle"].get(name) == 1)
    answers = await asyncio.gather(*(api.invoke(name, {"pause": pause}) for _ in range(8)))
    for status, call in answers:
        assert status == 200 and call["status"] == "DONE", call
    return [call["start"] for _, call in answers]


async def test_a_burst_of_short_calls_queues_for_the_warm_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Queueing 10 ms calls behind one warm sandbox is sooner than starting another."""
    async with running(tmp_path_factory) as (_, api):
        starts = await burst_starts(api, await deploy(api, "short"), 0.01)
        assert starts.count("warm") >= 6, starts  # at most two sandboxes started


async def test_a_burst_of_long_calls_starts_several_sandboxes_at_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Seven 2 s calls waiting on one sandbox would wait far longer than a start."""
    async with running(tmp_path_factory) as (_, api):
        starts = await burst_starts(api, await deploy(api, "long"), 2.0)
        assert 8 - starts.count("warm") >= 3, starts
        _, nodes = await api.request("GET", "/v1/nodes")
        assert nodes["items"][0]["capacity"] == 8


async def test_warm_affinity_places_by_the_expected_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With no idle warm sandbox anywhere, a call goes where it is expected to begin
    soonest: behind the busy sandbox of a short function (0.01 s of wait), not to the
    idle node, which would have to start one (least-loaded would send it there)."""
    async with running(tmp_path_factory, workers=2, policy="warm-affinity", preload="none") as (
        _,
        api,
    ):
        await deploy(api, "short")
        _, first = await api.invoke("short", {"pause": 0.01})
        home = first["nodeId"]
        # its heartbeat says so: warm there, its calls' time known
        await api.wait_nodes(
            lambda n: any(
                x["nodeId"] == home and x["idle"].get("short") == 1 and "short" in x["durations"]
                for x in n
            )
        )
        _, busy = await api.invoke("short", {"pause": 2.0}, blocking=False)
        _, call = await api.invoke("short", {"pause": 0.01})
        assert call["status"] == "DONE", call
        assert call["nodeId"] == home, call
        await api.wait_call(busy["callNum"])


async def test_a_call_waiting_for_a_start_takes_a_warm_sandbox_that_comes_free_first(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The node starts a sandbox for a call (its calls took 2 s, the one warm sandbox is
    busy), but that sandbox's call ends after 0.1 s, long before a start: the call goes
    to the warm one then, and the started sandbox becomes one more warm one. (No spare
    process: a spare takes such a call at once, its start then only the set-up.)"""
    async with running(tmp_path_factory, preload="none", env={"FUM_SPARE": "0"}) as (_, api):
        name = await deploy(api, "swing")
        _, first = await api.invoke(name, {"pause": 2.0})
        assert first["start"] == "cold", first
        await api.wait_nodes(lambda n: n[0]["idle"].get(name) == 1 and name in n[0]["durations"])
        _, busy = await api.invoke(name, {"pause": 0.1}, blocking=False)
        status, call = await api.invoke(name, {"pause": 0})
        assert status == 200 and call["status"] == "DONE", call
        assert call["start"] == "warm", call  # not the start made for it
        assert (await api.wait_call(busy["callNum"]))["status"] == "DONE"
        await api.wait_nodes(lambda n: n[0]["idle"].get(name) == 2)
