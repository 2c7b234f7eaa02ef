"""Runtimes and functions: stored in the db, mirrored in memory, pushed to every worker.

A function whose runtime has a ``dependencies`` command is built once, at deploy time:
a node runs the command on the package (``BuildRequested``), uploads the result to the
package store and says so (``BuildFinished``); the function's ``build`` says how it
stands, and every node sets the function's sandboxes up from the artifact. The build
is keyed by what it is made from (``build_key``): redeploying the same package, or
another function of the same package and runtime, reuses the build.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, TypeVar

import msgspec
import structlog

from services.common.archive import PackageLimits, validate_package
from services.common.db_client import DbClient
from services.common.errors import Conflict, NotFound
from services.common.models import (
    Build,
    Function,
    Limits,
    Runtime,
    Step,
    build_key,
    check_name,
    now,
)
from services.common.node_protocol import (
    BuildFinished,
    BuildRequested,
    FunctionRemoved,
    FunctionSynced,
    RuntimeRemoved,
    RuntimeSynced,
)
from services.common.tasks import Background

from .dispatch import Dispatcher

log = structlog.get_logger()

T = TypeVar("T")


def page_of(table: dict[str, T], names: list[str], after: str | None, limit: int) -> list[T]:
    """Up to ``limit`` entries of ``table`` in name order, from the first after ``after``;
    ``names`` is the table's names, sorted."""
    start = 0 if after is None else bisect.bisect_right(names, after)
    return [table[name] for name in names[start : start + limit]]


class StagedPackage:
    """An upload being written to a file of the package store, hashed as it comes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()
        self._file: BinaryIO | None = path.open("xb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def discard(self) -> None:
        """Remove the staging file (a no-op once the store has kept it)."""
        self.close()
        self.path.unlink(missing_ok=True)


STAGING = ".upload-"


class PackageStore:
    """Function packages and build artifacts on the api's disk, named by the sha256 of
    their bytes; those no function needs are removed (``collect``)."""

    def __init__(self, folder: Path, limits: PackageLimits) -> None:
        self.folder = folder
        self.limits = limits
        # keeping a file and collecting the unneeded ones (both on threads) take turns:
        # a file kept again is never removed under its new owner
        self._turn = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        for left in folder.glob(f"{STAGING}*"):  # uploads cut short by a stop
            left.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise NotFound(f"no package {sha256!r}")
        return self.folder / sha256

    def stage(self) -> StagedPackage:
        """A new staging file for an upload, in the store's folder (so keeping it is a
        rename)."""
        return StagedPackage(self.folder / f"{STAGING}{uuid.uuid4().hex}")

    def keep(self, staged: StagedPackage) -> str:
        """Read the staged archive through within the limits (``BadRequest`` if it breaks
        one: nothing is kept), then keep it under its sha256; return the sha."""
        staged.close()
        validate_package(staged.path, self.limits)
        sha = staged.sha256
        with self._turn:
            if self._renewed(sha):
                staged.discard()
            else:
                staged.path.rename(self.folder / sha)
        return sha

    def has(self, sha256: str) -> bool:
        """Whether the file is stored; if so, it is kept as if stored now."""
        with self._turn:
            return self._renewed(sha256)

    def _renewed(self, sha256: str) -> bool:
        try:
            os.utime(self.path(sha256))  # the grace of ``collect`` starts again
        except FileNotFoundError:
            return False
        return True

    def collect(self, needed: set[str], grace: float) -> list[str]:
        """Remove every stored file not ``needed`` (no function's package nor artifact)
        and not stored (or kept again) in the last ``grace`` seconds: an upload is stored
        before its function names it (a deploy; a build's artifact, before the build's
        end is told). The sha256s removed."""
        removed = []
        with self._turn:
            cutoff = time.time() - grace
            for entry in self.folder.iterdir():
                if entry.name in needed or entry.name.startswith(STAGING):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed.append(entry.name)
        return removed


class Catalog:
    def __init__(self, db: DbClient, packages: PackageStore, dispatcher: Dispatcher) -> None:
        self.db = db
        self.packages = packages
        self.dispatcher = dispatcher
        self.runtimes: dict[str, Runtime] = {}
        self.functions: dict[str, Function] = {}
        # the names of each, sorted, for pages in name order (kept as names come and go)
        self._runtime_names: list[str] = []
        self._function_names: list[str] = []
        self._background = Background()
        self._built: dict[str, asyncio.Event] = {}  # build key -> set when it is over
        dispatcher.on_build_finished = self._on_build_finished

    async def load(self) -> None:
        """Read the catalogue; builds left running by a stop are asked for again (and
        functions stored before builds existed get theirs)."""
        self.runtimes = {r.name: r for r in await self.db.list_runtimes()}
        self.functions = {f.name: f for f in await self.db.list_functions()}
        self._runtime_names = sorted(self.runtimes)
        self._function_names = sorted(self.functions)
        for function in list(self.functions.values()):
            runtime = self.runtimes.get(function.runtime)
            build = function.build
            if runtime is None:
                continue
            if build is not None and build.status == "building":
                again = msgspec.structs.replace(build, runs=build.runs + 1, started_at=now())
                stored, _ = await self._store_function(
                    msgspec.structs.replace(function, build=again)
                )
                self._request_build(runtime, stored)
            elif (build.key if build else None) != build_key(runtime, function.sha256):
                await self._rebuild(runtime, function)

    def runtime_page(self, after: str | None, limit: int) -> list[Runtime]:
        return page_of(self.runtimes, self._runtime_names, after, limit)

    def function_page(self, after: str | None, limit: int) -> list[Function]:
        return page_of(self.functions, self._function_names, after, limit)

    async def close(self) -> None:
        await self._background.close()

    async def collect_packages(self, grace: float) -> None:
        """Remove the stored packages and artifacts no function has (deleted, redeployed,
        rebuilt), once ``grace`` seconds old."""
        needed = set().union(*(f.stored_files() for f in self.functions.values()))
        removed = await asyncio.to_thread(self.packages.collect, needed, grace)
        if removed:
            log.info("packages.removed", count=len(removed))

    def snapshot(self) -> tuple[list[Runtime], list[Function]]:
        return list(self.runtimes.values()), list(self.functions.values())

    def runtime(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise NotFound(f"no runtime {name!r}") from None

    def function(self, name: str) -> Function:
        try:
            return self.functions[name]
        except KeyError:
            raise NotFound(f"no function {name!r}") from None

    async def put_runtime(
        self, runtime: Runtime, *, create_only: bool = False
    ) -> tuple[Runtime, bool]:
        check_name("runtime", runtime.name)
        if create_only and runtime.name in self.runtimes:
            raise Conflict(f"runtime {runtime.name!r} exists")
        stored, created = await self.db.put_runtime(runtime)
        if stored.name not in self.runtimes:
            bisect.insort(self._runtime_names, stored.name)
        self.runtimes[stored.name] = stored
        self.dispatcher.broadcast(RuntimeSynced(runtime=stored))
        for function in list(self.functions.values()):
            key = build_key(stored, function.sha256)
            if function.runtime == stored.name and key != (function.build and function.build.key):
                await self._rebuild(stored, function)  # a new image or command: built again
        return stored, created

    async def delete_runtime(self, name: str) -> None:
        await self.db.delete_runtime(name)
        if self.runtimes.pop(name, None) is not None:
            self._runtime_names.remove(name)
        self.dispatcher.broadcast(RuntimeRemoved(name=name))

    async def put_function(
        self,
        name: str,
        runtime: str,
        filename: str,
        package: StagedPackage,
        limits: Limits,
        workflow: Step | None = None,
    ) -> tuple[Function, bool]:
        """Store the package and the function; a bad archive fails before anything is kept."""
        check_name("function", name)
        of = self.runtime(runtime)
        sha = await asyncio.to_thread(self.packages.keep, package)
        build, start = self._build_for(of, sha)
        function = Function(
            name=name,
            runtime=runtime,
            sha256=sha,
            filename=filename,
            size=package.size,
            limits=limits,
            workflow=workflow,
            build=build,
        )
        stored, created = await self._store_function(function)
        if start:
            self._request_build(of, stored)
        return stored, created

    def runnable(self, name: str) -> Function:
        """The function, if a call of it can run (or wait for its build): ``Conflict`` when
        its build failed."""
        function = self.function(name)
        build = function.build
        if build is not None and build.status == "failed":
            last = build.log.strip().splitlines()[-1:] or ["no output"]
            raise Conflict(
                f"the build of function {name!r} failed ({last[0][:300]}); deploy it again"
                f" once fixed (GET /v1/functions/{name} has the build's log)"
            )
        return function

    async def wait_built(self, name: str, timeout: float) -> Function:
        """The function once its build is over, or as it stands after ``timeout`` s."""
        function = self.function(name)
        build = function.build
        if build is None or build.status != "building":
            return function
        event = self._built.setdefault(build.key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.function(name)

    # ---- builds

    def _build_for(self, runtime: Runtime, sha: str) -> tuple[Build | None, bool]:
        """The build a package on a runtime has: none, one that exists (ready or running,
        for any function), or a new one to start (the second value)."""
        key = build_key(runtime, sha)
        if key is None:
            return None, False
        for function in self.functions.values():
            build = function.build
            if build is not None and build.key == key and build.status != "failed":
                return build, False
        return Build(key=key, runs=1, started_at=now()), True

    async def _rebuild(self, runtime: Runtime, function: Function) -> None:
        build, start = self._build_for(runtime, function.sha256)
        stored, _ = await self._store_function(msgspec.structs.replace(function, build=build))
        if start:
            self._request_build(runtime, stored)

    def _request_build(self, runtime: Runtime, function: Function) -> None:
        assert function.build is not None
        key = function.build.key
        log.info("catalog.build_requested", function=function.name, key=key[:12])
        self._built.setdefault(key, asyncio.Event())
        self.dispatcher.request_build(BuildRequested(key=key, runtime=runtime, function=function))

    def _on_build_finished(self, node_id: int, message: BuildFinished) -> None:
        self._background.spawn(self._finish_build(node_id, message))

    async def _finish_build(self, node_id: int, message: BuildFinished) -> None:
        """Record a build's end in every function that has it, and push them to nodes."""
        artifact, text = message.artifact, message.log
        if artifact is not None and not self.packages.path(artifact).exists():
            artifact, text = None, f"{text}\nthe build's artifact never reached the api"
        for function in list(self.functions.values()):
            build = function.build
            if build is None or build.key != message.key or build.status != "building":
                continue
            done = msgspec.structs.replace(
                build,
                status="ready" if artifact else "failed",
                artifact=artifact,
                log=text,
                node_id=node_id,
                finished_at=now(),
            )
            await self._store_function(msgspec.structs.replace(function, build=done))
            log.info("catalog.build_finished", function=function.name, status=done.status)
        event = self._built.pop(message.key, None)
        if event is not None:
            event.set()

    async def update_limits(self, name: str, limits: Limits) -> Function:
        function = msgspec.structs.replace(self.function(name), limits=limits)
        stored, _ = await self._store_function(function)
        self.dispatcher.limits_changed(name)
        return stored

    async def _store_function(self, function: Function) -> tuple[Function, bool]:
        stored, created = await self.db.put_function(function)
        if stored.name not in self.functions:
            bisect.insort(self._function_names, stored.name)
        self.functions[stored.name] = stored
        self.dispatcher.broadcast(FunctionSynced(function=stored))
        return stored, created

    async def delete_function(self, name: str) -> None:
        await self.db.delete_function(name)
        if self.functions.pop(name, None) is not None:
            self._function_names.remove(name)
        self.dispatcher.broadcast(FunctionRemoved(name=name))
