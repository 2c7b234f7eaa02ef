"""Builds on this node: a function's dependencies installed once, in a sandbox of its
runtime, and the result (the runtime's path as the command left it) uploaded to the api.

The api asks one node per build (``BuildRequested``); the node runs it beside its pool,
through the node's own sandbox driver, so a build sees what a call would see (the same
image, or the same kind of process sandbox). Every node then sets sandboxes of the
function up from the artifact, fetched like a package: nothing installs on a call's path.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import structlog

from services.common.errors import FumError
from services.common.models import BUILD_LOG_LIMIT
from services.common.node_protocol import BuildFinished, BuildRequested
from services.miniworker.miniworker import open_driver

from .packages import PackageCache
from .pool import miniworker_settings
from .settings import WorkerSettings

log = structlog.get_logger()


def log_tail(text: str) -> str:
    return text if len(text) <= BUILD_LOG_LIMIT else text[-BUILD_LOG_LIMIT:]


class Builder:
    def __init__(
        self, settings: WorkerSettings, packages: PackageCache, passthrough: dict[str, str]
    ) -> None:
        self.settings = settings
        self.packages = packages
        self._passthrough = passthrough
        self._running: dict[str, asyncio.Future[BuildFinished]] = {}

    async def build(self, message: BuildRequested) -> BuildFinished:
        """Run the build (once, if asked again while it runs); how it ended."""
        running = self._running.get(message.key)
        if running is None:
            running = asyncio.ensure_future(self._build(message))
            self._running[message.key] = running
            running.add_done_callback(lambda _: self._running.pop(message.key, None))
        return await asyncio.shield(running)

    async def _build(self, message: BuildRequested) -> BuildFinished:
        s, key, function = self.settings, message.key, message.function
        # Beside the pool's sandboxes: where a compose node binds folders from the host.
        folder = Path(s.node_dir) / "sandboxes" / f"build-{key[:16]}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        settings = miniworker_settings(s, f"build-{key[:12]}", folder / "sandbox")
        log.info("build.started", key=key[:12], function=function.name)
        try:
            driver = await open_driver(settings, self._passthrough)
        except Exception as exc:  # no engine, say: the build fails, saying why
            shutil.rmtree(folder, ignore_errors=True)
            return BuildFinished(key=key, artifact=None, log=f"no sandbox for the build: {exc}")
        sandbox = driver.sandbox(message.runtime, function.limits, build=True)
        try:
            package = await self.packages.archive(function.sha256)
            await sandbox.start()
            artifact = folder / "artifact.tar.gz"
            output = await asyncio.wait_for(
                sandbox.build(function, package, artifact), s.setup_timeout
            )
            sha = await self.packages.upload(artifact)
        except TimeoutError:
            text = f"the build did not finish within {s.setup_timeout:g}s"
            return BuildFinished(key=key, artifact=None, log=text)
        except (FumError, OSError) as exc:
            log.info("build.failed", key=key[:12], function=function.name)
            return BuildFinished(key=key, artifact=None, log=log_tail(str(exc)))
        finally:
            await sandbox.destroy()
            await driver.close()
            shutil.rmtree(folder, ignore_errors=True)
        log.info("build.ready", key=key[:12], function=function.name, artifact=sha[:12])
        return BuildFinished(key=key, artifact=sha, log=log_tail(output))
