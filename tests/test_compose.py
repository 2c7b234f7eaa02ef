"""``deploy/compose.yaml``: a two-node cluster in containers, as a user brings it up."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fum_cli.cluster import compose_command
from fum_cli.local import free_port

from .support import Api, curl, invoke_dice, register_dice, targz

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
METRICS_FILE = ROOT / "deploy" / "metrics.yaml"  # the optional Prometheus, on here


class Compose:
    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        files = ["-f", str(COMPOSE_FILE), "-f", str(METRICS_FILE)]
        self.base = [*compose_command(), *files, "-p", project]
        self.url = f"http://127.0.0.1:{env['FUM_PORT']}"
        self.started = int(time.time())

    def __call__(self, *args: str, timeout: float = 300) -> str:
        out = subprocess.run(
            [*self.base, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


def docker(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_nodes(url: str, count: int, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v1/nodes", timeout=2) as response:
                if len(json.loads(response.read())["items"]) == count:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{count} nodes not up within {timeout}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    project = f"fumtest{uuid.uuid4().hex[:8]}"
    nodes = tmp_path_factory.mktemp("nodes")
    env = {
        **os.environ,
        "FUM_PORT": str(free_port()),
        "FUM_REGISTRY_PORT": str(free_port()),
        "FUM_NODES_DIR": str(nodes),
        "FUM_NETWORK": project,
        "FUM_INVOCATION_POLICY": "round-robin",
        "FUM_KEEPER_PORT": str(keeper_port := free_port()),
        "FUM_KEEPER_CLIENT_HOSTS": f"127.0.0.1:{keeper_port}",
        "FUM_PROMETHEUS_PORT": str(free_port()),
    }
    compose = Compose(project, env)
    try:
        compose("up", "-d")
        wait_nodes(compose.url, 2, 120)
        yield compose
    finally:
        subprocess.run(
            [*compose.base, "down", "-v", "--remove-orphans"],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        functions = f"{project}-functions"
        left = docker("ps", "-aq", "--filter", f"label=fum.network={functions}").split()
        volumes = docker("volume", "ls", "-q", "--filter", f"name={project}_").split()
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
        for network in (project, functions, f"{project}-metrics", f"{project}-keeper"):
            subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)
        assert left == [], "the workers left function containers behind"
        assert volumes == [], "compose down -v left volumes"


async def test_original_curl_sequence_on_both_nodes(cluster: Compose) -> None:
    url = cluster.url
    register_dice(url)
    nums = [invoke_dice(url) for _ in range(4)]
    async with aiohttp.ClientSession(url) as session:
        api = Api(session)
        calls = [await api.wait_call(n, timeout=120) for n in nums]
    assert [c["status"] for c in calls] == ["DONE"] * 4, [c["error"] for c in calls]
    for call in calls:
        assert len(call["result"]) == 4 and all(1 <= d <= 6 for d in call["result"])
    assert {c["nodeId"] for c in calls} == {0, 1}  # round-robin over the two nodes
    legacy = json.loads(curl(f"{url}/call/{nums[0]}"))
    assert legacy["status"] == "DONE" and len(json.loads(legacy["result"])) == 4


def test_prometheus_scrapes_every_service(cluster: Compose) -> None:
    """The optional Prometheus (deploy/metrics.yaml) finds every service's metrics up."""
    import urllib.request

    url = f"http://127.0.0.1:{cluster.env['FUM_PROMETHEUS_PORT']}/api/v1/targets"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                targets = json.loads(answer.read())["data"]["activeTargets"]
            health = {t["labels"]["instance"]: t["health"] for t in targets}
        except OSError:
            health = {}
        if len(health) == 5 and set(health.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}"
        time.sleep(1)
    query = f"http://127.0.0.1:{cluster.env['FUM_PROMETHEUS_PORT']}/api/v1/query?query=fum_nodes"
    with urllib.request.urlopen(query, timeout=5) as answer:
        result = json.loads(answer.read())["data"]["result"]
    assert [float(r["value"][1]) for r in result] == [2.0]


def execs_since(since: int, network: str, event: str = "exec_start") -> list[dict[str, str]]:
    """What the engine exec'd in the function containers of ``network`` since ``since``
    (docker events: the command, and the container's miniworker label); with ``event``,
    those events instead (``extract-to-dir``: a tar put into a container)."""
    out = docker(
        "events",
        "--since",
        str(since),
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        "type=container",
        "--filter",
        f"event={event}",
        "--filter",
        f"label=fum.network={network}",
        "--format",
        "{{json .}}",
    )
    execs = []
    for line in out.splitlines():
        event = json.loads(line)
        execs.append(
            {
                "command": event["Action"].partition(": ")[2],
                "miniworker": event["Actor"]["Attributes"].get("fum.miniworker", ""),
            }
        )
    return execs


async def test_the_seed_runtime_first_call_is_specialised_with_no_install(
    cluster: Compose,
) -> None:
    """The README's runtime and dice: pip runs once, in the build's container; the first
    call on a generic container of the runtime is specialised with what it built."""
    url = cluster.url
    register_dice(url)  # the README's runtime (pip3 install -r requirements.txt) and dice
    curl(
        "-X",
        "POST",
        "-F",
        f"module=@{ROOT / 'examples/dice/python.tar.gz'}",
        f"{url}/registerFunction/pythonruntime/dice-first",
    )
    async with aiohttp.ClientSession(url) as session:
        api = Api(session)
        _, function = await api.request("GET", "/v1/functions/dice-first", params={"wait": 60})
        build = function["build"]
        assert build["status"] == "ready" and build["runs"] == 1, build
        # every node has its generic container of the runtime ready (runtime preload)
        await api.wait_nodes(
            lambda n: len(n) == 2 and all(x["generic"].get("pythonruntime") for x in n), 120
        )
        status, call = await api.invoke("dice-first", {"roll": "3d6"})
    assert status == 200 and call["status"] == "DONE", call
    assert call["start"] == "specialized", call
    built_in = iso_seconds(build["finishedAt"]) - iso_seconds(build["startedAt"])
    assert call["initMs"] / 1000 < built_in, (call, build)  # the install was not on its path
    execs = execs_since(cluster.started, f"{cluster.project}-functions")
    installs = [e for e in execs if "pip3 install" in e["command"]]
    assert len(installs) == 1, execs  # one build for dice and dice-first (the same key)
    assert installs[0]["miniworker"].startswith("build-"), installs
    # nothing at all is exec'd in the other containers: their stem is their main process
    assert all(e["miniworker"].startswith("build-") for e in execs), execs
    # the package went into the build's container, and nothing into the others: they
    # have the node's store's files through a read-only bind at the runtime's path
    puts = execs_since(cluster.started, f"{cluster.project}-functions", "extract-to-dir")
    assert puts and all(e["miniworker"].startswith("build-") for e in puts), puts
    network = f"label=fum.network={cluster.project}-functions"
    ids = docker("ps", "-q", "--filter", network).split()
    mounts = [
        [m for m in info["Mounts"] if m["Destination"] == "/ws"]
        for info in json.loads(docker("inspect", *ids))
    ]
    assert mounts and all(len(m) == 1 and not m[0]["RW"] for m in mounts), mounts


def iso_seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


async def test_a_worker_lacking_an_image_pulls_it_from_the_registry(cluster: Compose) -> None:
    name = f"{cluster.project}-pulled"
    remote = f"localhost:{cluster.env['FUM_REGISTRY_PORT']}/{name}"
    docker("tag", "pythonruntime", remote)
    docker("push", remote)
    docker("rmi", remote)  # now no image of that name is on the engine
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime(
                name, {"image": name, "dependencies": "", "run": "python3 -m fum main:handle"}
            )
            fn = await api.handler_function("echo", name)
            status, call = await api.invoke(fn, {"pulled": True}, timeout=120)
            assert status == 200 and call["result"] == {"pulled": True}, call
    finally:
        subprocess.run(["docker", "rmi", "-f", name, remote], capture_output=True, check=False)


KEEPER_FUNCTION = """
import fum

def handle(params):
    client = fum.keeper()
    client.ensure_path(params["path"])
    counter = client.Counter(params["path"] + "/count")
    counter += 1
    return client.hosts
"""


async def test_functions_reach_the_keeper_which_keeps_its_tree(cluster: Compose) -> None:
    from kazoo.client import KazooClient

    path = f"/compose-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        _, health = await api.request("GET", "/healthz")
        assert health["keeper"] == cluster.env["FUM_KEEPER_CLIENT_HOSTS"]
        await api.runtime("pyh")
        status, body = await api.deploy(
            f"{cluster.project}-keeper", "pyh", targz({"main.py": KEEPER_FUNCTION})
        )
        assert status == 201, body
        for _ in range(4):  # round-robin: both nodes' containers
            status, call = await api.invoke(f"{cluster.project}-keeper", {"path": path})
            assert status == 200 and call["status"] == "DONE", call
            assert call["result"] == [["keeper", 2181]]
        # the api reads the same tree, on the network it shares with the keeper alone
        status, node = await api.request("GET", "/v1/keeper/nodes", params={"path": path})
        assert status == 200 and "count" in node["children"], node
    cluster("restart", "keeper")  # its SQLite file is in a volume
    deadline = time.monotonic() + 60
    while "healthy" not in docker("inspect", "-f", "{{.State.Health.Status}}", keeper_id(cluster)):
        assert time.monotonic() < deadline, "the keeper did not come back"
        time.sleep(0.5)
    client = KazooClient(health["keeper"])
    client.start(timeout=30)
    try:
        assert client.Counter(f"{path}/count").value == 4
    finally:
        client.stop()
        client.close()


def keeper_id(cluster: Compose) -> str:
    return cluster("ps", "-q", "keeper").strip()


async def test_calls_go_on_when_a_worker_stops(cluster: Compose) -> None:
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        echo = await api.handler_function("echo", "pyh")
        cluster("stop", "worker1")
        pending = [
            (await api.invoke(echo, {"i": i}, blocking=False))[1]["callNum"] for i in range(6)
        ]
        done = [await api.wait_call(n, timeout=120) for n in pending]
        assert all(c["status"] == "DONE" for c in done)
        assert {c["nodeId"] for c in done} == {0}
        await api.wait_nodes(lambda nodes: [n["nodeId"] for n in nodes] == [0])
        _, call = await api.invoke(echo, {"after": 1})
        assert call["status"] == "DONE" and call["nodeId"] == 0
        cluster("start", "worker1")
        await api.wait_nodes(lambda nodes: len(nodes) == 2, timeout=60)


def addresses(cluster: Compose, service: str) -> dict[str, str]:
    """The service's container's address on each network it is on."""
    (container,) = docker(
        "ps",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={cluster.project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ).split()
    networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container))
    return {name: network["IPAddress"] for name, network in networks.items()}


async def test_functions_reach_their_miniworker_and_nothing_of_the_control_plane(
    cluster: Compose,
) -> None:
    """A function tries the db's, the api's and the registry's ports, by service name and
    by address, and the registry's published port through its network's gateway: none
    answers; its own calls work (its miniworker is reached)."""
    control = {s: addresses(cluster, s)[cluster.project] for s in ("db", "api", "registry")}
    # on the control plane, and on the network Prometheus scrapes it on: neither is theirs
    assert sorted(addresses(cluster, "db")) == [cluster.project, f"{cluster.project}-metrics"]
    functions = f"{cluster.project}-functions"
    gateway = docker(
        "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", functions
    ).strip()
    ports = {"db": [3002], "api": [3001, 3000], "registry": [5000]}
    targets = [[host, port] for s, p in ports.items() for host in (s, control[s]) for port in p]
    targets.append([gateway, int(cluster.env["FUM_REGISTRY_PORT"])])
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        probe = await api.handler_function("probe", "pyh")
        for _ in range(2):  # round-robin: on both nodes
            status, call = await api.invoke(probe, {"targets": targets}, timeout=120)
            assert status == 200 and call["status"] == "DONE", call
            found = call["result"]
            assert found.pop("own miniworker") == "open", found
            assert found.pop("own miniworker at").split(":")[0] == f"worker{call['nodeId']}"
            assert len(found) == len(targets) and "open" not in found.values(), found
