"""Builds: a function's dependencies installed once, at deploy time, and every sandbox of it
set up from the result, on every node (docs/BUILDS.md).

Nothing here reaches a package index: the requirement is a wheel shipped in the
function's package (written by hand below), installed with ``--no-index``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fum_cli.local import LocalCluster
from services.api.catalog import PackageStore
from services.common.archive import PackageLimits

from .conftest import start_cluster
from .support import Api, targz, unique

WHEEL = "fumtinydep-1.0-py3-none-any.whl"
USES_DEP = """
    import os
    import socket
    import time

    import fumtinydep

    def handle(params):
        time.sleep(params.get("s", 0))
        sandbox = f"{socket.gethostname()}:{os.getpid()}"
        return {"value": fumtinydep.VALUE, "sandbox": sandbox, "dep": fumtinydep.__file__}
    """


def tiny_wheel() -> bytes:
    """A pure-Python wheel of the module ``fumtinydep`` (VALUE = "tiny"), as pip wants it."""
    files = {
        "fumtinydep/__init__.py": b'VALUE = "tiny"\n',
        "fumtinydep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fumtinydep\n"
        b"Version: 1.0\n",
        "fumtinydep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: fum-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("fumtinydep-1.0.dist-info/RECORD,,")
    files["fumtinydep-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return buf.getvalue()


def package_with(requirements: str, main: str = USES_DEP) -> bytes:
    """main.py, requirements.txt, and the wheel in wheels/."""
    buf = io.BytesIO()
    import tarfile
    import textwrap

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (
            ("main.py", textwrap.dedent(main).encode()),
            ("requirements.txt", requirements.encode()),
            (f"wheels/{WHEEL}", tiny_wheel()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, driver: str) -> Iterator[LocalCluster]:
    """Two nodes, calls placed on each in turn."""
    c = start_cluster(tmp_path_factory, driver=driver, workers=2, policy="round-robin")
    try:
        yield c
    finally:
        c.stop()


def pip_runtime(counter: str | None = None) -> dict[str, str]:
    """Handler functions whose requirements pip installs from the package alone; each run
    of the command (a build) appends a line to ``counter``, when given (process driver:
    the sandbox is a folder of this host)."""
    command = "pip3 install --no-index --no-cache-dir -r requirements.txt"
    if counter is not None:
        command += f" && echo built >> {counter}"
    return {"image": "pythonruntime", "run": "python3 -m fum main:handle", "dependencies": command}


async def built(api: Api, name: str) -> dict[str, Any]:
    """The function once its build is over."""
    for _ in range(12):
        status, function = await api.request("GET", f"/v1/functions/{name}", params={"wait": 10})
        assert status == 200, function
        if function["build"] is None or function["build"]["status"] != "building":
            return function  # type: ignore[no-any-return]
    raise AssertionError(f"the build of {name} never ended: {function}")


async def test_a_requirement_is_built_once_for_every_node_and_sandbox(
    api: Api, driver: str, tmp_path: Path
) -> None:
    counter = tmp_path / "builds.log"
    runtime = unique("pip")
    await api.runtime(runtime, pip_runtime(str(counter) if driver == "process" else None))
    name = unique("dep")
    package = package_with(f"./wheels/{WHEEL}\n")
    status, body = await api.deploy(name, runtime, package, minWarm=2)
    assert status == 201, body
    assert body["build"]["status"] in ("building", "ready"), body
    function = await built(api, name)
    build = function["build"]
    assert build["status"] == "ready", build
    assert build["runs"] == 1 and build["artifact"], build
    assert "fumtinydep" in build["log"], build["log"]
    # two sandboxes set up from the artifact on each node (minWarm), then calls on both
    # nodes (round-robin), at once, each of them taking one
    await api.wait_nodes(lambda nodes: [n["idle"].get(name) for n in nodes] == [2, 2])
    answers = await asyncio.gather(*(api.invoke(name, {"s": 0.3}) for i in range(8)))
    for status, call in answers:
        assert status == 200 and call["status"] == "DONE", call
    results = [call["result"] for _, call in answers]
    assert {r["value"] for r in results} == {"tiny"}
    assert len({call["nodeId"] for _, call in answers}) == 2  # both nodes
    assert len({r["sandbox"] for r in results}) >= 4, results
    # redeploying the same package builds nothing
    status, again = await api.deploy(name, runtime, package, minWarm=2)
    assert status == 200, again
    assert again["build"] == build
    _, nodes = await api.request("GET", "/v1/nodes")
    assert len(nodes["items"]) == 2
    final = await built(api, name)
    assert final["build"]["runs"] == 1
    if driver == "process":
        assert counter.read_text().splitlines() == ["built"]  # one run of the command, ever


# tries to change its own files and its dependency's; says what happened
WRITES = """
    import os

    import fumtinydep

    def handle(params):
        tried = {}
        for path in ("main.py", fumtinydep.__file__):
            try:
                with open(path, "a") as f:
                    f.write("# changed by a call\\n")
                tried[os.path.basename(path)] = "written"
            except OSError as exc:
                tried[os.path.basename(path)] = exc.strerror
        return {"value": fumtinydep.VALUE, "tried": tried, "cwd": os.getcwd()}
    """


def docker_out(*args: str) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_sandboxes_are_set_up_from_the_node_store_which_they_cannot_change(
    api: Api, cluster: LocalCluster, driver: str
) -> None:
    """Each node unpacks the artifact once into its store; a container's files are links
    to it in a folder bound read-only at the runtime's path (no copy), a process
    sandbox's a copy; whatever a call writes, the store is unchanged. Deleting the
    function removes its entries from every node."""
    runtime = unique("pip")
    await api.runtime(runtime, pip_runtime())
    name = unique("writes")
    main = WRITES + f"    # {name}\n"  # an artifact of its own
    status, body = await api.deploy(
        name, runtime, package_with(f"./wheels/{WHEEL}\n", main), minWarm=1
    )
    assert status == 201, body
    build = (await built(api, name))["build"]
    assert build["status"] == "ready", build
    artifact, package = build["artifact"], body["sha256"]
    await api.wait_nodes(lambda nodes: [n["idle"].get(name) for n in nodes] == [1, 1])
    answers = [await api.invoke(name, {}) for _ in range(2)]  # round-robin: one a node
    assert {call["nodeId"] for _, call in answers} == {0, 1}, answers
    for status, call in answers:
        assert status == 200 and call["status"] == "DONE", call
        assert call["result"]["value"] == "tiny"
        expected = "Read-only file system" if driver == "docker" else "written"
        assert call["result"]["tried"] == {"main.py": expected, "__init__.py": expected}, call
    for node in (0, 1):
        files = cluster.data_dir / f"node-{node}" / "store" / artifact / "files"
        for changed in (files / "main.py", files / "fumtinydep" / "__init__.py"):
            assert not changed.read_text().endswith("# changed by a call\n"), changed
        links = (files / "fumtinydep" / "__init__.py").stat().st_nlink
        # a container's file is the store's (another link to it), a process sandbox's a copy
        assert links >= 2 if driver == "docker" else links == 1, links
        if driver == "docker":  # two spare link farms, made again after the sandbox took one
            spare = files.parent / "spare"
            for _ in range(100):
                farms = [p.name for p in spare.iterdir() if not p.name.startswith(".")]
                if len(farms) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(farms) == 2, farms
    if driver == "docker":
        ids = docker_out(
            "ps", "-q", "--filter", f"label=fum.network={cluster.docker_network}"
        ).split()
        mounts = [
            m
            for info in json.loads(docker_out("inspect", *ids))
            for m in info["Mounts"]
            if m["Destination"] == "/ws"
        ]
        assert mounts and all(not m["RW"] and m["Type"] == "bind" for m in mounts), mounts
        assert all(m["Source"].endswith("/code") for m in mounts), mounts
    status, _ = await api.request("DELETE", f"/v1/functions/{name}")
    assert status in (200, 204)
    for node in (0, 1):
        node_dir = cluster.data_dir / f"node-{node}"
        for _ in range(100):
            left = [
                p
                for p in (
                    node_dir / "store" / artifact,
                    node_dir / "packages" / artifact,
                    node_dir / "packages" / package,
                )
                if p.exists()
            ]
            if not left:
                break
            await asyncio.sleep(0.1)
        assert not left, left


async def test_a_broken_requirement_fails_the_build_and_its_calls_get_409(api: Api) -> None:
    runtime = unique("pip")
    await api.runtime(runtime, pip_runtime())
    name = unique("broken")
    status, body = await api.deploy(name, runtime, package_with("fum-no-such-package-xyz\n"))
    assert status == 201, body
    function = await built(api, name)
    build = function["build"]
    assert build["status"] == "failed", build
    assert "fum-no-such-package-xyz" in build["log"], build["log"]
    for invoke in (
        api.invoke(name, {}),
        api.invoke(name, {}, blocking=False),
        api.request("POST", "/invokeFunction", json={"funcName": name, "params": {}}),
        api.request("POST", "/v1/calls", json={"calls": [{"function": name}]}),
    ):
        status, answer = await invoke
        assert status == 409, answer
        assert answer["error"]["code"] == "conflict"
        assert "build" in answer["error"]["message"], answer
        assert "fum-no-such-package-xyz" in answer["error"]["message"], answer


async def test_a_call_made_while_its_function_builds_waits_for_the_build(api: Api) -> None:
    runtime = unique("pip")
    spec = pip_runtime()
    spec["dependencies"] = "sleep 1 && " + spec["dependencies"]
    await api.runtime(runtime, spec)
    name = unique("slowbuild")
    status, body = await api.deploy(name, runtime, package_with(f"./wheels/{WHEEL}\n"))
    assert status == 201 and body["build"]["status"] == "building", body
    status, call = await api.invoke(name, {})
    assert status == 200 and call["status"] == "DONE", call
    assert call["result"]["value"] == "tiny"
    _, function = await api.request("GET", f"/v1/functions/{name}")
    assert function["build"]["status"] == "ready" and function["build"]["runs"] == 1


async def test_a_runtime_without_dependencies_builds_nothing(api: Api) -> None:
    runtime = unique("plain")
    await api.runtime(runtime)
    name = await api.handler_function("echo", runtime)
    _, function = await api.request("GET", f"/v1/functions/{name}")
    assert function["build"] is None
    status, call = await api.invoke(name, {"x": 1})
    assert status == 200 and call["status"] == "DONE", call


async def test_artifacts_are_stored_by_their_sha256_only(api: Api) -> None:
    data = b"not what it says"
    wrong = hashlib.sha256(b"something else").hexdigest()
    octet = {"Content-Type": "application/octet-stream"}
    status, body = await api.request("PUT", f"/v1/packages/{wrong}", data=data, headers=octet)
    assert status == 400 and "sha256" in body["error"]["message"], body
    status, body = await api.request("PUT", "/v1/packages/nothex", data=data, headers=octet)
    assert status == 400, body
    sha = hashlib.sha256(data).hexdigest()
    status, body = await api.request("PUT", f"/v1/packages/{sha}", data=data, headers=octet)
    assert status == 400, body  # not an archive: nothing kept
    status, _ = await api.request("GET", f"/v1/packages/{sha}")
    assert status == 404
    status, body = await api.request(
        "PUT", f"/v1/packages/{sha}", data=data, headers={"Content-Type": "text/plain"}
    )
    assert status == 415, body
    good = targz({"a.txt": "a"})
    sha = hashlib.sha256(good).hexdigest()
    status, body = await api.request("PUT", f"/v1/packages/{sha}", data=good, headers=octet)
    assert status == 201, body
    status, body = await api.request("PUT", f"/v1/packages/{sha}", data=good, headers=octet)
    assert status == 200, body


async def test_fn_deploy_waits_for_the_build_and_fails_with_its_log(
    api: Api, cluster: LocalCluster, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from fum_cli.main import app

    runtime = unique("pip")
    await api.runtime(runtime, pip_runtime())
    env = {
        "FUM_API_URL": cluster.url,
        "FUM_CONFIG": str(tmp_path / "config.toml"),
        "FUM_API_KEY": "",
    }
    for name, requirement in (("good", f"./wheels/{WHEEL}"), ("bad", "fum-no-such-package-xyz")):
        folder = tmp_path / name
        (folder / "wheels").mkdir(parents=True)
        (folder / "main.py").write_text(USES_DEP)
        (folder / "requirements.txt").write_text(requirement + "\n")
        (folder / "wheels" / WHEEL).write_bytes(tiny_wheel())
    good, bad = unique("good"), unique("bad")
    args = ["fn", "deploy", "--runtime", runtime, "--name"]
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, good, str(tmp_path / "good"), "--json"], env=env
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["build"]["status"] == "ready"
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, bad, str(tmp_path / "bad")], env=env
    )
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "build failed" in result.stderr and "fum-no-such-package-xyz" in result.stderr


def test_the_package_store_removes_what_no_function_has_after_its_grace(
    tmp_path: Path,
) -> None:
    store = PackageStore(tmp_path / "packages", PackageLimits())
    files = {}
    for name in ("needed", "stray", "fresh", "asked"):
        files[name] = hashlib.sha256(name.encode()).hexdigest()
        (store.folder / files[name]).write_bytes(b"x")
        os.utime(store.folder / files[name], (1.0e9, 1.0e9))  # stored long ago
    os.utime(store.folder / files["fresh"])  # stored just now
    staging = store.folder / ".upload-left"
    staging.write_bytes(b"x")
    os.utime(staging, (1.0e9, 1.0e9))
    assert store.has(files["asked"]) and not store.has(hashlib.sha256(b"none").hexdigest())
    # "asked" is a node's upload of a file stored already: it is kept anew
    removed = store.collect({files["needed"]}, grace=600)
    assert removed == [files["stray"]]
    left = {p.name for p in store.folder.iterdir()}
    assert left == {files["needed"], files["fresh"], files["asked"], staging.name}


async def test_a_redeployed_or_deleted_functions_package_is_removed_from_the_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cluster = start_cluster(tmp_path_factory, preload="none", env={"FUM_PACKAGE_GRACE": "1"})
    folder = cluster.data_dir / "api" / "packages"
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime("pyh")
            old = targz({"main.py": "def handle(params):\n    return 1\n"})
            new = targz({"main.py": "def handle(params):\n    return 2\n"})
            stray = targz({"a.txt": "a"})
            for package in (old, new):
                status, body = await api.deploy("gc", "pyh", package)
                assert status in (200, 201), body
            octet = {"Content-Type": "application/octet-stream"}
            sha = {p: hashlib.sha256(p).hexdigest() for p in (old, new, stray)}
            status, _ = await api.request(
                "PUT", f"/v1/packages/{sha[stray]}", data=stray, headers=octet
            )
            assert status == 201

            async def stored_becomes(expected: set[str]) -> None:
                for _ in range(100):
                    if {p.name for p in folder.iterdir()} == expected:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{sorted(p.name for p in folder.iterdir())} != {expected}")

            await stored_becomes({sha[new]})
            status, call = await api.invoke("gc", {})
            assert (status, call["result"]) == (200, 2), call
            status, _ = await api.request("DELETE", "/v1/functions/gc")
            assert status in (200, 204)
            await stored_becomes(set())
    finally:
        cluster.stop()
