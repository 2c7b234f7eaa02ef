"""The compose file on Docker Swarm: the stack validates, and a one-node swarm serves calls."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fum_cli.local import free_port
from services.common.curve import ClusterKeys

from .support import remove_function_containers

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
FILES = ["-c", str(ROOT / "deploy/compose.yaml"), "-c", str(ROOT / "deploy/swarm.yaml")]


def docker(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    out = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def keys_env(folder: Path) -> dict[str, str]:
    """The environment of a deploy: the control plane's keys made beforehand, in ``folder``."""
    ClusterKeys.open(folder)
    return {**os.environ, "FUM_KEYS": str(folder)}


def test_stack_file_validates_with_a_global_worker(tmp_path: Path) -> None:
    config = docker("stack", "config", *FILES, env=keys_env(tmp_path / "keys"))
    assert "mode: global" in config
    assert "{{.Node.Hostname}}" in config and "{{.Task.Name}}" in config
    # the keys are secrets: the workers get the server's public key, never its secret
    assert f"file: {tmp_path / 'keys' / 'server.key_secret'}" in config
    worker = config[config.index("  worker0:") :]
    assert (
        "target: server.key\n" in worker
        and "server.key_secret" not in worker.split("  worker1:")[0]
    )


def request(url: str, data: bytes | None = None, form: tuple[str, bytes] | None = None) -> object:
    headers = {"Content-Type": "application/json"}
    if form is not None:
        boundary = uuid.uuid4().hex
        name, payload = form
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="module"; '
                f'filename="{name}"\r\n\r\n'
            ).encode()
            + payload
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def swarm(images: None, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if state == "active":  # an earlier run of this test killed before it cleaned up?
        stacks = docker("stack", "ls", "--format", "{{.Name}}").split()
        if all(name.startswith("fumswarm") for name in stacks):
            for name in stacks:
                dismantle(name)
            subprocess.run(
                ["docker", "swarm", "leave", "--force"], capture_output=True, check=False
            )
            state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if state != "inactive":
        pytest.fail(f"the engine is already in a swarm ({state}); this test makes its own")
    stack = f"fumswarm{uuid.uuid4().hex[:6]}"
    env = {
        **keys_env(tmp_path / "keys"),
        "FUM_PORT": str(free_port()),
        "FUM_REGISTRY_PORT": str(free_port()),
        "FUM_NETWORK": stack,
        # Swarm refuses a bind mount whose source is missing (DEPLOY.md): made here
        "FUM_NODES_DIR": str(tmp_path / "nodes"),
    }
    (tmp_path / "nodes" / "node-0").mkdir(parents=True)
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        deployed(stack, env)
        yield f"http://127.0.0.1:{env['FUM_PORT']}", env
    finally:
        dismantle(stack)
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, check=False)


def dismantle(stack: str) -> bool:
    """Remove the stack, its function containers, networks and volumes; whether its
    networks went (within a minute)."""
    subprocess.run(["docker", "stack", "rm", stack], capture_output=True, check=False)
    remove_function_containers(f"{stack}-functions")
    # Left before its networks are gone, the node keeps one for good (an overlay that
    # still holds its load balancer's endpoint; only an engine restart drops it), and a
    # later swarm's networks collide with it
    deadline = time.monotonic() + 60
    while (left := stack in docker("network", "ls", "--format", "{{.Name}}")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    for volume in ("db", "packages", "registry"):
        subprocess.run(
            ["docker", "volume", "rm", "-f", f"{stack}_{volume}"], capture_output=True, check=False
        )
    return not left


OVERLAP = "Pool overlaps with other one on this address space"


def deployed(stack: str, env: dict[str, str], tries: int = 3) -> None:
    """Deploy the stack; deploy it again when the engine gave one of its networks a subnet
    it then refuses (every task on that network rejected with OVERLAP: the subnet of an
    overlay an earlier swarm left on the node, docs/DEPLOY.md), printing the networks."""
    for _ in range(tries):
        docker("stack", "deploy", *FILES, stack, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            errors = docker("stack", "ps", stack, "--no-trunc", "--format", "{{.Error}}")
            if OVERLAP not in errors:
                running = docker("stack", "ps", stack, "--format", "{{.CurrentState}}")
                if running and all(s.startswith("Running") for s in running.split("\n") if s):
                    return
                time.sleep(1)
                continue
            print(f"{stack}: {OVERLAP}, deployed again\n{networks()}")
            assert dismantle(stack), "the stack's networks were never removed"
            break
        else:
            return  # not all running yet, and nothing refused: the test waits on
    raise AssertionError(f"{OVERLAP} in {tries} deploys\n{networks()}")


def networks() -> str:
    """The engine's networks and their subnets."""
    names = docker("network", "ls", "-q").split()
    template = "{{.Name}} {{.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{end}}"
    return docker("network", "inspect", "-f", template, *names)


def state() -> str:
    """The stack's tasks, the engine's networks and the tail of each service's log, for a
    failure's message."""
    out = subprocess.run(
        "docker service ls; docker ps -a --filter label=com.docker.stack.namespace; "
        "for s in $(docker service ls -q); do docker service ps --no-trunc $s; "
        "docker service logs --tail 30 $s; done",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout + out.stderr + networks()


@pytest.mark.timeout(600)
def test_one_node_swarm_serves_the_original_sequence(swarm: tuple[str, dict[str, str]]) -> None:
    url, _ = swarm
    deadline = time.monotonic() + 240
    while True:  # services start in any order and wait for each other
        try:
            nodes = request(f"{url}/v1/nodes")["items"]  # type: ignore[index]
            if nodes:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the swarm's worker never registered\n" + state()
        time.sleep(1)
    assert nodes[0]["driver"] == "docker" and nodes[0]["nodeId"] > 1  # derived from the name
    request(
        f"{url}/registerRuntime",
        json.dumps(
            {
                "image": "pythonruntime",
                "path": "/ws",
                "dependencies": "pip3 install -r requirements.txt",
                "run": "python3 test.py",
            }
        ).encode(),
    )
    request(
        f"{url}/registerFunction/pythonruntime/dice",
        form=("python.tar.gz", (ROOT / "examples/dice/python.tar.gz").read_bytes()),
    )
    num = request(f"{url}/invokeFunction", b'{"funcName":"dice", "params": {"roll":"4d6"}}')[
        "callNum"
    ]  # type: ignore[index]
    deadline = time.monotonic() + 120
    while (call := request(f"{url}/call/{num}"))["status"] in ("PENDING", "RUNNING"):  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert call["status"] == "DONE"  # type: ignore[index]
    assert len(json.loads(call["result"])) == 4  # type: ignore[index]
