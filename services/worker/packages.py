"""Function packages and build artifacts on this node: fetched once over HTTP from the
api (or uploaded there from here, after a build), verified, cached by sha256, and each
unpacked once into the node's store, where every sandbox of it is set up from
(docs/BUILDS.md, "The node's store")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import structlog

from services.common.archive import PackageLimits, extract_package
from services.common.errors import FumError, NotFound, Unavailable
from services.common.tasks import retrying
from services.miniworker.sandbox import link_tree

log = structlog.get_logger()

FETCH_DEADLINE = 60.0  # seconds a package fetch is tried again while the api does not answer


class PackageCache:
    """Packages by sha256: the archive in ``node_dir/packages/<sha256>`` and its files in
    ``node_dir/store/<sha256>/``, each made once (concurrent requests share the work).

    The store is what sandboxes are set up from: a container gets its function's files
    as links to these (docs/BUILDS.md), a process sandbox a copy. Nothing of it is
    shared between nodes; an entry no function of the catalogue needs is removed
    (``keep_only``)."""

    def __init__(
        self,
        node_dir: Path,
        api_url: str,
        session: aiohttp.ClientSession,
        limits: PackageLimits,
        spares: int = 0,
    ) -> None:
        self.folder = node_dir.resolve() / "packages"
        self.store = node_dir.resolve() / "store"
        for folder in (self.folder, self.store):
            folder.mkdir(parents=True, exist_ok=True)
        self.store.chmod(0o755)
        # what a previous run left half made or half removed
        _remove([*self.store.glob("*.*"), *self.folder.glob("*.*")])
        self._limits = limits
        self._api_url = api_url.rstrip("/")
        self._session = session
        self._ready: dict[str, Path] = {}  # archives on this node
        self._unpacked: dict[str, Path] = {}  # their files in the store
        self._fetching: dict[str, asyncio.Future[Path]] = {}
        self._unpacking: dict[str, asyncio.Future[Path]] = {}
        self._spares = spares  # link farms kept made ahead per entry (the docker driver's)
        self._making: dict[str, asyncio.Future[None]] = {}
        # artifacts built here that no function has named yet (the api names them after)
        self._built: set[str] = set()

    def cached(self, sha256: str) -> Path | None:
        """The package's files in the store, when they are there already."""
        return self._unpacked.get(sha256)

    async def get(self, sha: str) -> Path:
        """The package's (or artifact's) files in the store: the folder a sandbox is set up
        from, downloaded and unpacked first if needed."""
        if (files := self._unpacked.get(sha)) is not None:
            return files
        files = self.store / sha / "files"
        if files.is_dir():  # unpacked by a previous run (a part is renamed when whole)
            self._unpacked[sha] = files
            return files
        pending = self._unpacking.get(sha)
        if pending is None:
            pending = asyncio.ensure_future(self._unpack(sha))
            self._unpacking[sha] = pending
            pending.add_done_callback(lambda _: self._unpacking.pop(sha, None))
        return await asyncio.shield(pending)

    async def _unpack(self, sha: str) -> Path:
        archive = await self.archive(sha)
        part = self.store / f"{sha}.{os.getpid()}.part"
        shutil.rmtree(part, ignore_errors=True)
        try:
            await asyncio.to_thread(_unpack_into, archive, part / "files", self._limits)
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
        part.rename(self.store / sha)
        files = self._unpacked[sha] = self.store / sha / "files"
        self.replenish(sha)
        return files

    def replenish(self, sha: str) -> asyncio.Future[None] | None:
        """Make the entry's spare link farms up to ``spares`` again, in the background (a
        sandbox that took one leaves one fewer); the making, if any."""
        files = self._unpacked.get(sha)
        if not self._spares or files is None:
            return None
        making = self._making.get(sha)
        if making is None:
            making = asyncio.ensure_future(asyncio.to_thread(_make_spares, files, self._spares))
            self._making[sha] = making
            making.add_done_callback(lambda _: self._making.pop(sha, None))
        return making

    async def archive(self, sha: str) -> Path:
        """The package's (or artifact's) archive on this node, downloading it if needed."""
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

    def named(self, shas: Iterable[str]) -> None:
        """These are a function's now: ``keep_only`` decides on them like any other."""
        self._built.difference_update(shas)

    def keep_only(self, needed: Iterable[str]) -> None:
        """Remove every archive and store entry whose sha256 is not ``needed`` (nor being
        made now). Sandboxes set up from an entry keep their files: a container's are
        links (the data stays until the last link goes), a process sandbox's a copy."""
        needed = set(needed)
        self.named(needed)
        keep = needed | self._built | set(self._fetching) | set(self._unpacking)
        keep |= set(self._making)
        removed = []
        for folder, cache in ((self.folder, self._ready), (self.store, self._unpacked)):
            for entry in folder.iterdir():
                name = entry.name
                if name in keep or "." in name:  # a .part being written
                    continue
                cache.pop(name, None)
                gone = folder / f"{name}.{os.getpid()}.gone"
                with contextlib.suppress(OSError):
                    entry.rename(gone)  # at once: a get() from now on makes it again
                    removed.append(gone)
        if removed:
            log.info("packages.removed", entries=len(removed))
            asyncio.get_running_loop().run_in_executor(None, _remove, removed)

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
        store, and its files in this node's store (unpacked while it is uploaded: this
        node's first call of it finds them there); its sha256."""
        sha = await asyncio.to_thread(_sha256_of, artifact)
        path = self.folder / sha
        await asyncio.to_thread(artifact.replace, path)
        self._ready[sha] = path
        self._built.add(sha)
        sent = retrying(lambda: self._upload(sha, path), FETCH_DEADLINE, f"artifact {sha[:12]}")
        await asyncio.gather(sent, self._unpacked_with_spares(sha))
        return sha

    async def _unpacked_with_spares(self, sha: str) -> None:
        await self.get(sha)
        if (making := self.replenish(sha)) is not None:
            await making

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


def _unpack_into(archive: Path, files: Path, limits: PackageLimits) -> None:
    """The archive's files in ``files``, readable by a sandbox of any user, none writable
    but by this node's."""
    extract_package(archive, files, limits)
    for here, _, _ in os.walk(files):
        os.chmod(here, 0o755)


def _make_spares(files: Path, count: int) -> None:
    """Spare link farms of an entry's files, up to ``count``: each a folder of hard links
    to them (``link_tree``), made under a dotted name and renamed when whole."""
    spare = files.parent / "spare"
    spare.mkdir(exist_ok=True)
    for _ in range(count - sum(1 for name in os.listdir(spare) if not name.startswith("."))):
        part = spare / f".{uuid.uuid4().hex}"
        part.mkdir()
        link_tree(files, part)
        part.rename(spare / part.name[1:])


def _remove(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()
