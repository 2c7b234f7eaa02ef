"""Exactly one result per workflow instance under faults: a worker killed with SIGKILL in
the middle of a map, and a step's call delivered twice on purpose."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import zmq.asyncio

from fum_cli.local import LocalCluster
from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.models import NewCall

from .conftest import start_cluster
from .workflows import Apps, app_archive, apps_of

# Every step prints a line: a step's call logs say whether the step ran in it.
MAP = {
    "Split": (
        {"Start": True, "Next": {"Name": "Work", "InputType": "Map"}},
        "def lambda_handler(event, context):\n    return list(range(event))\n",
    ),
    "Work": (
        {
            "Next": {"Name": "Sum", "InputType": {"Fan-in": {"Values": ["Work-unumIndex-*"]}}},
            "Next Payload Modifiers": ["Pop"],
        },
        """
        import time

        def lambda_handler(event, context):
            print("ran", event, flush=True)
            time.sleep(0.2)  # long enough that the killed node surely has one running
            return event + 1
        """,
    ),
    "Sum": ({}, "def lambda_handler(event, context):\n    return sum(event)\n"),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(
        tmp_path_factory,
        workers=2,
        policy="round-robin",
        env={"FUM_SWEEP_INTERVAL": "1", "FUM_KEEP_CHECKPOINTS": "1"},
    )
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def apps(cluster: LocalCluster) -> AsyncIterator[Apps]:
    async with apps_of(cluster) as client:
        yield client


def checkpoints(cluster: LocalCluster, session: str) -> list[str]:
    """The instances checkpointed in the db (kept: FUM_KEEP_CHECKPOINTS), read from its file."""
    path = cluster.data_dir / "fum.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT instance FROM checkpoints WHERE session = ?", (session,))
        return [row[0] for row in rows]


async def test_a_worker_killed_mid_map_leaves_one_result_per_instance(
    cluster: LocalCluster, apps: Apps
) -> None:
    await apps.deployed("killmap", app_archive(MAP))
    status, started = await apps.run("killmap", 200, blocking=False)
    assert status == 202, started
    session = started["id"]
    # mid-session: a quarter of the map done, both nodes among those who ran it
    while True:
        view = await apps.session("killmap", session)
        done = [i for i in view["instances"] if i["status"] == "DONE"]
        nodes = set()
        for instance in done[1:]:
            _, call = await apps.api.request("GET", f"/v1/calls/{instance['callNum']}")
            nodes.add(call["nodeId"])
        if len(done) >= 50 and nodes == {0, 1}:
            break
        assert view["status"] == "RUNNING", "too late: the session ended before the kill"
        await asyncio.sleep(0.05)
    cluster.stop_process("worker-1", signal.SIGKILL)
    deadline = time.monotonic() + 120
    while view["status"] == "RUNNING":
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.2)
        view = await apps.session("killmap", session)
    assert (view["status"], view["result"]) == ("DONE", sum(range(1, 201))), view["error"]
    names = [i["name"] for i in view["instances"]]
    assert sorted(names) == sorted(["Split", "Sum", *(f"Work-unumIndex-{i}" for i in range(200))])
    kept = checkpoints(cluster, session)
    assert sorted(kept) == sorted(names)  # one checkpoint per instance, no more
    _, sums = await apps.api.request("GET", "/v1/calls", params={"function": "killmap.Sum"})
    assert [c["status"] for c in sums["items"]] == ["DONE"]  # the fan-in ran once
    _, works = await apps.api.request(
        "GET", "/v1/calls", params={"function": "killmap.Work", "limit": "1000"}
    )
    assert len(works["items"]) == 200 and all(c["status"] == "DONE" for c in works["items"])
    assert any(c["attempts"] > 1 for c in works["items"])  # the lost node's, run again


SLOW_CHAIN = {
    "First": (
        {"Start": True, "Next": {"Name": "Second"}},
        "def lambda_handler(event, context):\n    print('first ran', flush=True)\n"
        "    return event + 1\n",
    ),
    "Second": (
        {},
        "import time\n\ndef lambda_handler(event, context):\n"
        "    time.sleep(4)\n    return event * 10\n",
    ),
}


async def test_a_step_delivered_twice_runs_once(cluster: LocalCluster, apps: Apps) -> None:
    await apps.deployed("twice", app_archive(SLOW_CHAIN))
    _, started = await apps.run("twice", 4, blocking=False)
    session = started["id"]
    while True:  # First is done, Second is made (and runs for a while)
        view = await apps.session("twice", session)
        if [i["status"] for i in view["instances"]][:1] == ["DONE"] and len(view["instances"]) == 2:
            break
        await asyncio.sleep(0.05)
    first = view["instances"][0]
    # the same delivery again, as a second call of First's instance: made in the db, and
    # placed by the api's sweep of PENDING calls
    ctx = zmq.asyncio.Context()
    db = DbClient(ctx, f"tcp://127.0.0.1:{cluster.db_port}", ClusterKeys.load(cluster.keys_dir))
    try:
        params = (await db.get_call(first["callNum"])).params
        made = NewCall(
            uuid=uuid.uuid4().hex,
            func_name="twice.First",
            params=params,
            created_at=time.time() - 10,
        )
        (again,) = await db.create_calls([made])
    finally:
        await db.close()
        ctx.destroy(linger=0)
    duplicate = await apps.api.wait_call(again.call_num, timeout=30)
    assert (duplicate["status"], duplicate["result"]) == ("DONE", 5), duplicate
    _, logs = await apps.api.request("GET", f"/v1/calls/{again.call_num}/logs")
    _, first_logs = await apps.api.request("GET", f"/v1/calls/{first['callNum']}/logs")
    assert "first ran" in first_logs["logs"] and "first ran" not in logs["logs"]
    final = await apps.ended("twice", session)
    assert (final["status"], final["result"]) == ("DONE", 50)
    assert [i["name"] for i in final["instances"]] == ["First", "Second"]
    _, seconds = await apps.api.request("GET", "/v1/calls", params={"function": "twice.Second"})
    assert len(seconds["items"]) == 1  # the re-sent continuation found its call made
