"""Helpers for workflow tests: apps built in memory or packed from a folder, and a client
of the apps routes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from fum_cli.local import LocalCluster

from .support import Api

DATA = Path(__file__).parent / "data" / "unum"
ARCHIVE = {"Content-Type": "application/gzip"}


def pack(folder: Path) -> bytes:
    """A folder as a tar.gz, its contents at the archive's root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buf.getvalue()


def app_archive(functions: dict[str, tuple[dict[str, Any], str]], **globals_: Any) -> bytes:
    """An app: for each function, its unum_config.json (without Name) and its app.py."""
    files: dict[str, str] = {}
    template: dict[str, Any] = {"Globals": {"ApplicationName": "t", **globals_}, "Functions": {}}
    for name, (config, code) in functions.items():
        folder = name.lower()
        files[f"{folder}/unum_config.json"] = json.dumps({"Name": name, **config})
        files[f"{folder}/app.py"] = textwrap.dedent(code)
        files[f"{folder}/requirements.txt"] = ""
        template["Functions"][name] = {
            "Properties": {"CodeUri": f"{folder}/", "Runtime": "python3.11"}
        }
    files["unum-template.yaml"] = json.dumps(template)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


IDENTITY = "def lambda_handler(event, context):\n    return event\n"


@contextlib.asynccontextmanager
async def apps_of(cluster: LocalCluster) -> AsyncIterator[Apps]:
    """An ``Apps`` client of the cluster, closed on leaving."""
    async with aiohttp.ClientSession(cluster.url) as session:
        yield Apps(Api(session))


class Apps:
    """The apps routes over an ``Api``."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def deploy(self, name: str, archive: bytes) -> tuple[int, Any]:
        return await self.api.request("PUT", f"/v1/apps/{name}", data=archive, headers=ARCHIVE)

    async def deployed(self, name: str, archive: bytes) -> Any:
        status, body = await self.deploy(name, archive)
        assert status in (200, 201), body
        return body

    async def run(self, name: str, event: Any = None, **query: Any) -> tuple[int, Any]:
        return await self.api.request(
            "POST",
            f"/v1/apps/{name}/sessions",
            data=json.dumps(event),
            headers={"Content-Type": "application/json"},
            params={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()},
        )

    async def session(self, name: str, session: str) -> Any:
        status, body = await self.api.request("GET", f"/v1/apps/{name}/sessions/{session}")
        assert status == 200, body
        return body

    async def finished(self, name: str, event: Any = None, timeout: float = 60.0) -> Any:
        """Run a session to its end: its view."""
        status, body = await self.run(name, event, timeout=timeout)
        assert status in (200, 202), body
        return body if body["status"] != "RUNNING" else await self.ended(name, body["id"])

    async def ended(self, name: str, session: str, timeout: float = 60.0) -> Any:
        """Wait for a session to end: its view."""
        deadline = time.monotonic() + timeout
        while (body := await self.session(name, session))["status"] == "RUNNING":
            assert time.monotonic() < deadline, f"session still running: {body}"
            await asyncio.sleep(0.05)
        return body
