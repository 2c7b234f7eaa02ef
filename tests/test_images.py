"""The image builds: ``deploy/build-images.sh`` builds every image, caches by inputs, pushes.

These tests drive the real script against the real Docker engine. The first build
can take minutes (a Debian base from debootstrap where ``python:3.11-slim`` cannot
be pulled, a wheelhouse, three images); later runs find the images up to date.
The script runs from a snapshot of the checkout (seeded with its wheel cache) so that
edits made meanwhile do not count as changed inputs. The tests start containers (a
registry, one-shot runtime containers) and always remove them; the images stay, as
the script is meant to leave them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SERVICES = "fum/services:latest"
RUNTIME = "pythonruntime:latest"
RUNTIME_ALIAS = "fum/python-runtime:latest"
REGISTRY = "fum/registry:latest"
# The primary tag of each image, as the script reports it (one line per image).
REPORTED = (SERVICES, RUNTIME, REGISTRY)
STATUSES = ("up to date", "built", "pulled", "pushed")

# A cached run restages the sources and resolves the wheelhouse offline: seconds.
CACHED_RUN_SECONDS = 90

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

Proc = subprocess.CompletedProcess[str]

# Loopback HTTP must not go through a proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Run:
    stdout: str
    stderr: str
    seconds: float
    statuses: dict[str, str] = field(default_factory=dict)


def snapshot(dest: Path) -> Path:
    """Copy the checkout to ``dest`` (with the wheel cache), for builds from a fixed tree.

    Others may be editing the tree while the tests run, and an edit between two runs
    would rightly make the second one rebuild.
    """
    junk = shutil.ignore_patterns(
        ".git", ".venv", ".build", "__pycache__", "*.egg-info", ".*_cache", "build", ".fum"
    )
    for attempt in range(3):  # a file removed while it is copied: copy again
        shutil.rmtree(dest, ignore_errors=True)
        try:
            shutil.copytree(ROOT, dest, ignore=junk, symlinks=True)
            break
        except shutil.Error:
            if attempt == 2:
                raise
    wheelhouse = ROOT / "deploy" / ".build" / "wheelhouse"
    if wheelhouse.is_dir():
        shutil.copytree(wheelhouse, dest / "deploy" / ".build" / "wheelhouse")
    return dest


def run_script(
    checkout: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 1500
) -> Run:
    """Run the checkout's script from an unrelated directory; fail the test if it fails."""
    start = time.monotonic()
    proc = subprocess.run(
        [str(checkout / "deploy" / "build-images.sh"), *args],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        pytest.fail(
            f"build-images.sh {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    statuses = {}
    for line in proc.stdout.splitlines():
        for status in STATUSES:
            if line.endswith(" " + status):
                statuses[line[: -len(status)].strip()] = status
    return Run(proc.stdout, proc.stderr, seconds, statuses)


def docker(*args: str, timeout: float = 120, check: bool = True) -> Proc:
    """Run the docker CLI; with ``check``, a failure fails the test with docker's output."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def inspect(image: str, template: str) -> str:
    return docker("image", "inspect", "-f", template, image).stdout.strip()


def label(image: str) -> str:
    return inspect(image, '{{index .Config.Labels "fum.inputs"}}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with _http.open(url, timeout=timeout) as response:
        return response.status, response.read()


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine")
    return snapshot(tmp_path_factory.mktemp("images") / "fum")


@pytest.fixture(scope="session")
def first_build(checkout: Path) -> Run:
    """Every image, built (or found up to date) once for the session."""
    return run_script(checkout)


@pytest.fixture
def registry(first_build: Run) -> Iterator[str]:
    """A fum/registry container on a free loopback port; yields its address host:port."""
    name = f"fum-test-registry-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5000", REGISTRY)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = http_get(f"http://{address}/v2/")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                logs = docker("logs", name, check=False)
                pytest.fail(f"registry did not answer /v2/ within 60s\n{logs.stdout}{logs.stderr}")
            time.sleep(0.2)
        yield address
    finally:
        docker("rm", "-f", "-v", name, check=False)


def test_every_image_exists_with_its_inputs_label(first_build: Run) -> None:
    for tag in REPORTED:
        assert first_build.statuses.get(tag) in ("built", "up to date"), first_build.stdout
    for tag in (SERVICES, RUNTIME, RUNTIME_ALIAS, REGISTRY):
        assert re.fullmatch(r"[0-9a-f]{64}", label(tag)), f"{tag} has no fum.inputs label"
    # One runtime image under both names.
    assert inspect(RUNTIME, "{{.Id}}") == inspect(RUNTIME_ALIAS, "{{.Id}}")


@contextlib.contextmanager
def build_lock() -> Iterator[dict[str, str]]:
    """Hold the script's lock: no build from another checkout can retag the images meanwhile.

    Yields the environment that tells the script the lock is held by its caller.
    """
    with open(f"/tmp/fum-build-images-{os.getuid()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield {**os.environ, "FUM_BUILD_LOCKED": "1"}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_second_run_is_cached_and_fast(checkout: Path, first_build: Run) -> None:
    # Other sessions may build from their own trees (the tags are the engine's):
    # hold the lock over a run that makes the images current and the run under test.
    with build_lock() as env:
        run_script(checkout, env=env)
        labels = {tag: label(tag) for tag in REPORTED}
        second = run_script(checkout, env=env)
        assert {tag: label(tag) for tag in REPORTED} == labels
    for tag in REPORTED:
        assert second.statuses.get(tag) == "up to date", second.stdout
    # The base line too: nothing at all was built or pulled.
    assert set(second.statuses.values()) == {"up to date"}, second.stdout
    assert second.seconds < CACHED_RUN_SECONDS, f"cached run took {second.seconds:.0f}s"


def test_runtime_has_fum_and_pyzmq(first_build: Run) -> None:
    docker("run", "--rm", "pythonruntime", "python3", "-c", "import fum, zmq")
    # kazoo, for fum.keeper() (docs/KEEPER.md)
    docker("run", "--rm", "pythonruntime", "python3", "-c", "import kazoo.client, fum.keeper")


def test_runtime_python_and_pip_are_the_venv_and_work_offline(first_build: Run) -> None:
    script = (
        "command -v python3 && command -v pip3 && pwd"
        " && : > requirements.txt && pip3 install -r requirements.txt"
    )
    out = docker("run", "--rm", "--network", "none", "pythonruntime", "sh", "-c", script)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["/opt/fum/bin/python3", "/opt/fum/bin/pip3", "/ws"], out.stdout


def test_services_image_runs_the_services(first_build: Run) -> None:
    docker(
        "run",
        "--rm",
        "fum/services",
        "python",
        "-c",
        "import services.keeper.server, fum, aiodocker",
    )
    cmd = json.loads(inspect(SERVICES, "{{json .Config.Cmd}}"))
    assert cmd == ["python", "-P", "-m", "services.api"]


def test_registry_serves_the_distribution_api(registry: str) -> None:
    status, body = http_get(f"http://{registry}/v2/")
    assert status == 200
    assert json.loads(body) == {}


def test_push_runtime_into_the_registry(checkout: Path, registry: str) -> None:
    pushed = [f"{registry}/{RUNTIME}", f"{registry}/{RUNTIME_ALIAS}"]
    try:
        run = run_script(checkout, "--only", "runtime", "--push", registry)
        for tag in pushed:
            assert run.statuses.get(tag) == "pushed", run.stdout
        status, body = http_get(f"http://{registry}/v2/_catalog")
        assert status == 200
        repositories = json.loads(body)["repositories"]
        assert "pythonruntime" in repositories
        assert "fum/python-runtime" in repositories
        status, body = http_get(f"http://{registry}/v2/pythonruntime/tags/list")
        assert json.loads(body)["tags"] == ["latest"]
    finally:
        # Only the extra tags the push made; the image itself stays.
        docker("rmi", *pushed, check=False)
