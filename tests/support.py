"""Helpers for tests against a running cluster: packages built in memory, an HTTP client."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from fum_cli.local import free_port

HANDLER_RUNTIME = {
    "image": "pythonruntime",
    "path": "/ws",
    "dependencies": "",
    "run": "python3 -m fum main:handle",
}

FUNCTIONS = {
    "echo": "def handle(params):\n    return params\n",
    "fail": "def handle(params):\n    raise ValueError('boom: ' + str(params.get('why')))\n",
    "sleepy": """
        import time

        def handle(params):
            time.sleep(params.get("s", 0))
            return "slept"
        """,
    "crash": """
        import os, sys

        def handle(params):
            print("about to die", file=sys.stderr, flush=True)
            os._exit(3)
        """,
    "chatty": """
        import sys

        def handle(params):
            print("out:", params["n"], flush=True)
            print("err:", params["n"], file=sys.stderr, flush=True)
            return params["n"]
        """,
    # tries a TCP connection to each [host, port]: "open", or why not; "own miniworker"
    # is the port this function's ``ok``s go to (where it must get through)
    "probe": """
        import os
        import socket

        def handle(params):
            targets = [*params["targets"], [os.environ["FUM_HOST_IP"], os.environ["FUM_HOST_PORT"]]]
            found = {}
            for host, port in targets:
                try:
                    socket.create_connection((host, int(port)), timeout=1.0).close()
                    found[f"{host}:{port}"] = "open"
                except OSError as exc:
                    found[f"{host}:{port}"] = type(exc).__name__
            own = "{}:{}".format(*targets[-1])
            found["own miniworker"], found["own miniworker at"] = found.pop(own), own
            return found
        """,
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def targz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, textwrap.dedent(text))
    return buf.getvalue()


def handler_package(kind: str, archive: str = "tar.gz") -> bytes:
    files = {"main.py": FUNCTIONS[kind]}
    return targz(files) if archive == "tar.gz" else zipped(files)


ROOT = Path(__file__).resolve().parent.parent


def curl(*args: str) -> str:
    out = subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def register_dice(url: str) -> None:
    """The original design's first two curl examples: the runtime, then the dice function."""
    curl(
        "--header",
        "Content-Type: application/json",
        "-X",
        "POST",
        "--data",
        '{"image": "pythonruntime","path": "/ws","dependencies": "pip3 install -r '
        'requirements.txt","run":"python3 test.py"}',
        f"{url}/registerRuntime",
    )
    curl(
        "-X",
        "POST",
        "-F",
        f"module=@{ROOT / 'examples/dice/python.tar.gz'}",
        f"{url}/registerFunction/pythonruntime/dice",
    )


def invoke_dice(url: str) -> int:
    """The original design's invoke example; its call number."""
    answer = curl(
        "--header",
        "Content-Type: application/json",
        "-X",
        "POST",
        "--data",
        '{"funcName":"dice", "params": {"roll":"4d6"}}',
        f"{url}/invokeFunction",
    )
    return int(json.loads(answer)["callNum"])


class Api:
    """A thin client over aiohttp: returns (status, decoded JSON body)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, path, **kwargs) as response:
            body = await response.read()
            data = json.loads(body) if body else None
            return response.status, data

    async def runtime(self, name: str, spec: dict[str, str] | None = None) -> None:
        status, body = await self.request(
            "PUT", f"/v1/runtimes/{name}", json=spec or HANDLER_RUNTIME
        )
        assert status in (200, 201), body

    async def deploy(
        self, name: str, runtime: str, package: bytes, filename: str = "pkg.tar.gz", **fields: Any
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("module", io.BytesIO(package), filename=filename)
        form.add_field("runtime", runtime)
        for key, value in fields.items():
            form.add_field(key, str(value))
        return await self.request("PUT", f"/v1/functions/{name}", data=form)

    async def handler_function(self, kind: str, runtime: str, **fields: Any) -> str:
        name = unique(kind)
        status, body = await self.deploy(name, runtime, handler_package(kind), **fields)
        assert status == 201, body
        return name

    async def invoke(self, name: str, params: Any = None, **query: Any) -> tuple[int, Any]:
        return await self.request(
            "POST",
            f"/v1/functions/{name}/invoke",
            data=json.dumps(params if params is not None else {}),
            headers={"Content-Type": "application/json"},
            params={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()},
        )

    async def wait_call(self, num: int, timeout: float = 60.0) -> dict[str, Any]:
        """Poll a call until it is final (the api has no push to clients)."""
        deadline = time.monotonic() + timeout
        while True:
            status, call = await self.request("GET", f"/v1/calls/{num}")
            assert status == 200, call
            if call["status"] in ("DONE", "ERROR", "TIMEOUT"):
                return call  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"call {num} still {call['status']}"
            await asyncio.sleep(0.05)

    async def wait_nodes(self, check: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll /v1/nodes until ``check(nodes)`` holds (heartbeats carry warm sandboxes)."""
        deadline = time.monotonic() + timeout
        while True:
            _, body = await self.request("GET", "/v1/nodes")
            if check(body["items"]):
                return body["items"]  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"nodes never matched: {body}"
            await asyncio.sleep(0.1)


FUM = Path(sys.executable).parent / "fum"  # the CLI of this virtualenv


@contextmanager
def fum_up(*args: str, cwd: Path | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``fum up --port P ARGS`` until it says where it serves: the process and its url;
    killed at the end if it still runs."""
    port = free_port()
    proc = subprocess.Popen(
        [str(FUM), "up", "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# ---- state at scale: a calls table of a million rows, built once


def build_calls_file(path: Path, count: int, rare: str = "rare") -> None:
    """A db file holding ``count`` finished calls, through the db's own schema (its
    migrations, then one executemany in one transaction: a million rows in seconds).

    Most calls belong to a hundred functions, DONE or (one in ten) ERROR; the ten oldest
    belong to ``rare``, half of them DONE: the filter a scan by status makes slow.
    """
    import sqlite3

    from services.db.settings import DbSettings
    from services.db.store import Store

    async def schema() -> None:
        store = await Store.open(DbSettings(db_path=str(path)))
        await store.close()

    asyncio.run(schema())
    created = time.time() - count * 0.001

    def rows() -> Iterator[tuple[object, ...]]:
        for num in range(1, count + 1):
            func = rare if num <= 10 else f"f{num % 100}"
            status = "ERROR" if (num % 2 == 0 if num <= 10 else num % 10 == 0) else "DONE"
            at = created + num * 0.001
            params = b'{"i":%d}' % num
            done = status == "DONE"
            result, error = (b"%d" % num, None) if done else (None, "boom")
            row = (num, f"{num:032x}", func, status, 0, 1, "warm", at, at, at + 0.0005)
            yield (*row, params, result, error)

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO calls (call_num, uuid, func_name, status, node_id, attempts, start, "
            "created_at, started_at, finished_at, params, result, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def remove_function_containers(network: str) -> None:
    """Remove the function containers on a docker network (``fum.network`` label) that a
    cluster stopped abruptly, or a stack removed under its workers, left behind."""
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=fum.network={network}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
