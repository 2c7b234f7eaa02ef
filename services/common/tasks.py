"""Async helpers: owned background tasks, and retrying what a restarting peer did not answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from .errors import Unavailable

log = structlog.get_logger()

R = TypeVar("R")


class Background:
    """The background tasks of one component, cancelled together when it closes."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed", task=task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def retrying(op: Callable[[], Awaitable[R]], deadline: float, what: str) -> R:
    """Run an idempotent request again while its peer does not answer (a restart, say),
    up to ``deadline`` seconds; then raise its last ``Unavailable``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    pause = 0.05
    while True:
        try:
            return await op()
        except Unavailable as exc:
            if loop.time() + pause > give_up:
                raise
            log.warning("retrying", what=what, error=exc.message)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
