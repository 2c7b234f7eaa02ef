"""Function packages and build artifacts on this node: fetched once over HTTP from the
api (or uploaded there from here, after a build), verified, cached by sha256."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp

from services.common.errors import FumError, NotFound, Unavailable
from services.common.tasks import retrying

FETCH_DEADLINE = 60.0  # seconds a package fetch is tried again while the api does not answer


class PackageCache:
    """Packages by sha256 in ``folder``; concurrent requests for one share a download."""

    def __init__(self, folder: Path, api_url: str, session: aiohttp.ClientSession) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._api_url = api_url.rstrip("/")
        self._session = session
        self._ready: dict[str, Path] = {}
        self._fetching: dict[str, asyncio.Future[Path]] = {}

    def cached(self, sha256: str) -> Path | None:
        return self._ready.get(sha256)

    async def get(self, sha: str) -> Path:
        """The package's (or artifact's) path on this node, downloading it first if needed."""
        if (path := self._ready.get(sha)) is not None:
            return path
        path = self.folder / sha
        if path.exists():
            self._ready[sha] = path
            return path
        pending = self._fetching.get(sha)
        if pending is None:
            # The api may be restarting: try again for a while before failing the call.
            pending = asyncio.ensure_future(
                retrying(lambda: self._download(sha, path), FETCH_DEADLINE, f"package {sha[:12]}")
            )
            self._fetching[sha] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(sha, None))
        return await asyncio.shield(pending)

    async def _download(self, sha: str, path: Path) -> Path:
        url = f"{self._api_url}/v1/packages/{sha}"
        partial = path.with_suffix(f".{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            async with self._session.get(url) as response:
                if response.status == 404:  # not stored at the api: trying again is no use
                    raise NotFound(f"package {sha[:12]}: the api has no such package")
                if response.status in (401, 403):  # a key problem: trying again is no use
                    raise FumError(
                        f"package {sha[:12]}: the api refused this worker ({response.status}):"
                        " set FUM_API_KEY to a key of its FUM_API_KEYS file"
                    )
                if response.status != 200:
                    raise Unavailable(f"package {sha[:12]}: GET {url} answered {response.status}")
                with partial.open("wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        digest.update(chunk)
                        out.write(chunk)
        except aiohttp.ClientError as exc:
            partial.unlink(missing_ok=True)
            raise Unavailable(f"package {sha[:12]}: GET {url} failed: {exc}") from None
        if digest.hexdigest() != sha:
            partial.unlink(missing_ok=True)
            raise FumError(f"package {sha[:12]}: downloaded bytes do not match the sha256")
        partial.rename(path)
        self._ready[sha] = path
        return path

    async def upload(self, artifact: Path) -> str:
        """Keep a file made here (a build's artifact) in the cache and in the api's package
        store; its sha256."""
        sha = await asyncio.to_thread(_sha256_of, artifact)
        path = self.folder / sha
        await asyncio.to_thread(artifact.replace, path)
        self._ready[sha] = path
        await retrying(lambda: self._upload(sha, path), FETCH_DEADLINE, f"artifact {sha[:12]}")
        return sha

    async def _upload(self, sha: str, path: Path) -> None:
        url = f"{self._api_url}/v1/packages/{sha}"
        headers = {"Content-Type": "application/octet-stream"}
        try:
            with path.open("rb") as body:
                async with self._session.put(url, data=body, headers=headers) as response:
                    if response.status in (200, 201):
                        return
                    text = (await response.text())[:500]
                    if response.status >= 500:
                        raise Unavailable(f"artifact {sha[:12]}: PUT {url}: {response.status}")
                    raise FumError(f"artifact {sha[:12]}: the api refused it: {text}")
        except aiohttp.ClientError as exc:
            raise Unavailable(f"artifact {sha[:12]}: PUT {url} failed: {exc}") from None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()
