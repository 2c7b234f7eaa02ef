"""What only the docker driver has: containers, their limits, their labels, their faults."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .conftest import start_cluster
from .support import Api, targz, unique
from .workflows import DATA, Apps, pack

pytestmark = pytest.mark.docker

HOG = """
def handle(params):
    hog = bytearray(params["mb"] * 1024 * 1024)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    return len(hog)
"""

# sleeps, and says which container it sleeps in: a file in its output folder, on the node
MARKED_SLEEP = """
import time

import fum

def handle(params):
    fum.output_path(f"running-{params['s']}").touch()
    time.sleep(params["s"])
    return "slept"
"""


def docker(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def containers_of(cluster: LocalCluster, node: int = 0) -> list[str]:
    return docker(
        "ps",
        "-aq",
        "--filter",
        f"label=fum.network={cluster.docker_network}",
        "--filter",
        f"label=fum.node={node}",
    ).split()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, images: None) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, driver="docker", preload="none")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        yield api


async def container_running(cluster: LocalCluster, seconds: str) -> str:
    """The container running MARKED_SLEEP's call of ``seconds`` right now."""
    sandboxes = cluster.data_dir / "node-0" / "sandboxes"
    for _ in range(200):
        for found in sandboxes.glob(f"*/output/output/running-{seconds}"):
            mw = found.parent.parent.parent.name
            return docker(
                "ps",
                "-q",
                "--filter",
                f"label=fum.miniworker={mw}",
                "--filter",
                f"label=fum.network={cluster.docker_network}",
            ).strip()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no call of {seconds}s is running")


async def test_containers_are_unprivileged_limited_and_labelled(
    api: Api, cluster: LocalCluster
) -> None:
    name = await api.handler_function("echo", "pyh", memory=128, cpus=0.5, pids=64)
    _, call = await api.invoke(name, {"x": 1})
    assert call["status"] == "DONE" and call["start"] == "cold"
    infos = [json.loads(docker("inspect", cid))[0] for cid in containers_of(cluster)]
    mine = [i for i in infos if i["HostConfig"]["Memory"] == 128 * 1024 * 1024]
    assert len(mine) == 1
    host = mine[0]["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    env = dict(e.split("=", 1) for e in mine[0]["Config"]["Env"])
    assert env["input_dir"] == "/input/input" and env["output_dir"] == "/output/output"
    labels = mine[0]["Config"]["Labels"]
    assert labels["fum"] == "1" and labels["fum.node"] == "0"


async def test_memory_limit_is_enforced(api: Api) -> None:
    from .support import targz

    name = "hog-" + api.__class__.__name__.lower()
    status, _ = await api.deploy(name, "pyh", targz({"main.py": HOG}), memory=64)
    assert status in (200, 201)
    _, small = await api.invoke(name, {"mb": 8})
    assert small["status"] == "DONE" and small["result"] == 8 * 1024 * 1024
    _, big = await api.invoke(name, {"mb": 256})
    assert big["status"] == "ERROR" and "signal 9" in big["error"]
    _, again = await api.invoke(name, {"mb": 8})
    assert again["status"] == "DONE"


@pytest.mark.parametrize("fault", ["kill", "rm"])
async def test_container_killed_or_removed_mid_call_is_retried(
    api: Api, cluster: LocalCluster, fault: str
) -> None:
    name = f"marked-{fault}"
    status, _ = await api.deploy(name, "pyh", targz({"main.py": MARKED_SLEEP}))
    assert status in (200, 201)
    _, warm = await api.invoke(name, {"s": 0})
    assert warm["status"] == "DONE"
    _, pending = await api.invoke(name, {"s": 2.5}, blocking=False)
    cid = await container_running(cluster, "2.5")
    if fault == "kill":
        docker("kill", cid)
    else:
        docker("rm", "-f", cid)
    call = await api.wait_call(pending["callNum"], timeout=60)
    assert call["status"] == "DONE" and call["result"] == "slept"
    assert call["attempts"] == 2  # run again on a fresh container
    _, after = await api.invoke(name, {"s": 0})
    assert after["status"] == "DONE" and after["result"] == "slept"


def processes(container: str) -> list[str]:
    """The command lines of what runs in ``container``."""
    lines = docker("top", container, "-o", "pid,args").splitlines()[1:]
    return [line.split(None, 1)[1] for line in lines]


async def test_a_python_function_runs_in_the_stem_its_container_started_with(
    api: Api, cluster: LocalCluster
) -> None:
    """The stem is the container's main process (under its shell): the function runs in
    it, nothing is exec'd for it; the container killed mid-call starts with a new one."""
    status, _ = await api.deploy("marked-stem", "pyh", targz({"main.py": MARKED_SLEEP}))
    assert status in (200, 201)
    for seconds in ("1.5", "1.6"):
        _, pending = await api.invoke("marked-stem", {"s": float(seconds)}, blocking=False)
        cid = await container_running(cluster, seconds)
        assert "fum.stem" in " ".join(json.loads(docker("inspect", cid))[0]["Config"]["Cmd"])
        running = processes(cid)
        assert "python3 -m fum.stem" in running, running
        assert not any("fum main:handle" in p for p in running), running  # no exec
        if seconds == "1.5":
            docker("kill", cid)
        call = await api.wait_call(pending["callNum"], timeout=60)
        assert call["status"] == "DONE" and call["result"] == "slept", call


VENDORED_MAIN = """
import runpy
import sys

sys.path.insert(0, "vendor")  # this image has no fum: the function brings its own
sys.argv = ["fum", "handler:handle"]
runpy.run_module("fum", run_name="__main__", alter_sys=True)
"""


async def test_an_image_without_fum_has_its_run_command_execd(
    api: Api, cluster: LocalCluster
) -> None:
    """A stem needs fum in the image's Python: without it the stem fails at once, and the
    run command is exec'd instead, as for any command the stem cannot become."""
    image = f"fum-test-nofum-{uuid.uuid4().hex[:8]}"
    maker = f"{image}-maker"
    site = "$(python3 -c 'import fum, os; print(os.path.dirname(fum.__file__))')"
    docker("run", "--name", maker, "pythonruntime", "sh", "-c", f"rm -rf {site}")
    docker("commit", maker, image)
    docker("rm", maker)
    library = Path(__file__).resolve().parent.parent / "libs" / "fum" / "fum"
    files = {f"vendor/fum/{f.name}": f.read_text() for f in library.glob("*.py")}
    files["main.py"] = VENDORED_MAIN
    files["handler.py"] = "def handle(params):\n    return params['x'] * 2\n"
    runtime = {"image": image, "path": "/ws", "dependencies": "", "run": "python3 main.py"}
    name = unique("nofum")
    try:
        await api.runtime(image, runtime)
        status, body = await api.deploy(name, image, targz(files))
        assert status in (200, 201), body
        for x in (1, 2):
            _, call = await api.invoke(name, {"x": x})
            assert call["status"] == "DONE" and call["result"] == 2 * x, call.get("error")
        cid = docker("ps", "-q", "--filter", f"ancestor={image}").split()
        assert len(cid) == 1, cid
        running = processes(cid[0])
        assert "python3 main.py" in running and "python3 -m fum.stem" not in running, running
    finally:
        await api.request("DELETE", f"/v1/functions/{name}")
        await api.request("DELETE", f"/v1/runtimes/{image}")
        left = docker("ps", "-aq", "--filter", f"ancestor={image}").split()
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


async def test_a_starting_worker_removes_its_orphans(cluster: LocalCluster) -> None:
    orphan = docker(
        "create",
        "--label",
        "fum=1",
        "--label",
        "fum.node=0",
        "--label",
        f"fum.network={cluster.docker_network}",
        "pythonruntime",
        "true",
    ).strip()
    other = docker(
        "create",
        "--label",
        "fum=1",
        "--label",
        "fum.node=0",
        "--label",
        "fum.network=someone-else",
        "pythonruntime",
        "true",
    ).strip()
    try:
        before = cluster.get("/v1/nodes")["items"][0]["registeredAt"]  # type: ignore[index]
        cluster.stop_process("worker-0")
        cluster.start_worker(0)
        async with aiohttp.ClientSession(cluster.url) as session:
            await Api(session).wait_nodes(lambda n: n and n[0]["registeredAt"] != before)
        assert docker("ps", "-aq", "--filter", f"id={orphan}").strip() == ""
        assert docker("ps", "-aq", "--filter", f"id={other}").strip() != ""
    finally:
        subprocess.run(["docker", "rm", "-f", orphan, other], capture_output=True, check=False)


def address(container: str, network: str) -> str:
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container))
    return str(networks[network]["IPAddress"])


async def test_a_function_container_reaches_its_miniworker_only(
    api: Api, cluster: LocalCluster
) -> None:
    """On the host, the cluster's own network: the control plane listens on loopback, out of
    the containers' reach through the gateway; other function containers are out of reach
    (no inter-container traffic); the function's own miniworker answers, and listens on the
    gateway only."""
    echo = await api.handler_function("echo", "pyh")
    _, call = await api.invoke(echo, {})
    assert call["status"] == "DONE"
    running = docker("ps", "-q", "--filter", f"label=fum.network={cluster.docker_network}")
    other = address(running.split()[0], cluster.docker_network)
    gateway = docker(
        "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", cluster.docker_network
    ).strip()
    targets = [[gateway, p] for p in (cluster.db_port, cluster.node_port, cluster.http_port)]
    targets.append([other, 5555])  # another function's FUM port
    probe = await api.handler_function("probe", "pyh")
    _, call = await api.invoke(probe, {"targets": targets})
    assert call["status"] == "DONE", call
    found = call["result"]
    assert found.pop("own miniworker") == "open", found
    host, port = found.pop("own miniworker at").split(":")
    assert host == gateway
    assert len(found) == len(targets) and "open" not in found.values(), found
    with pytest.raises(ConnectionRefusedError):  # not on the host's other interfaces
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()


async def test_a_workflow_app_runs_in_containers(api: Api) -> None:
    """The appstore's map app as published: each step in a container of its own function,
    its continuation done by the worker (docs/WORKFLOWS.md)."""
    apps = Apps(api)
    await apps.deployed("dmap", pack(DATA / "map"))
    done = await apps.finished("dmap", {"Data": {"Source": "http", "Value": [3, 1, 2]}}, 120)
    assert (done["status"], done["result"]) == ("DONE", [3, 1, 2]), done
    names = sorted(i["name"] for i in done["instances"])
    assert names == ["F1-unumIndex-0", "F1-unumIndex-1", "F1-unumIndex-2", "Summary", "UnumMap0"]
    for instance in done["instances"]:  # run in containers: the calls say how they started
        status, call = await api.request("GET", f"/v1/calls/{instance['callNum']}")
        assert status == 200 and call["start"] in ("cold", "warm"), call
