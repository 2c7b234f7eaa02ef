"""Retention of finished calls: the old ones deleted in the background, the space compacted.

Off by default (``FUM_DB_KEEP_DAYS``, ``FUM_DB_KEEP_CALLS``). A pass every
``FUM_DB_RETENTION_INTERVAL`` seconds deletes what is beyond the setting a small batch at
a time, each batch its own short transaction on the writer's thread followed by as long
a pause, so the batches of requests that arrive meanwhile run between two of them; then
it gives the freed pages back to the file system the same way (SQLite's incremental
vacuum, a few hundred pages a step).
Calls not finished are never deleted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Literal, ParamSpec, TypeVar

import structlog

from .settings import DbSettings
from .store import Store

log = structlog.get_logger()

P = ParamSpec("P")
T = TypeVar("T")

BATCH = 500  # calls deleted in one transaction: a few milliseconds of the writer
COMPACT_PAGES = 256  # pages given back in one step (1 MiB of 4 KiB pages)
DAY = 86400.0


class Retention:
    """Deletes the finished calls the settings do not keep, pass after pass."""

    def __init__(self, store: Store, settings: DbSettings) -> None:
        self._store = store
        self._settings = settings

    async def run(self) -> None:
        log.info(
            "db.retention_on",
            keep_days=self._settings.db_keep_days or None,
            keep_calls=self._settings.db_keep_calls or None,
            interval=self._settings.db_retention_interval,
        )
        while True:
            try:
                await self.sweep()
            except sqlite3.Error as exc:  # a busy file, a full disk: the next pass tries again
                log.error("db.retention_failed", error=str(exc))
            await asyncio.sleep(self._settings.db_retention_interval)

    async def sweep(self) -> int:
        """One pass: delete what is not kept, then compact; how many calls went."""
        started = time.perf_counter()
        deleted = 0
        if self._settings.db_keep_calls:
            bound = await self._store.read(self._store.newest_beyond, self._settings.db_keep_calls)
            if bound:
                deleted += await self._delete("count", bound)
        if self._settings.db_keep_days:
            deleted += await self._delete("age", time.time() - self._settings.db_keep_days * DAY)
        free = 0
        if deleted:
            free = await self._compact()
            log.info(
                "db.retention",
                deleted=deleted,
                free_pages=free,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        return deleted

    async def _compact(self) -> int:
        """Give the free pages back, a step at a time, until none are left (or a step
        gives none back: a file that is not compactable); how many stay free."""
        free = -1
        while True:
            left = await self._paced(self._store.compact, COMPACT_PAGES)
            if left in (0, free):
                return left
            free = left

    async def _delete(self, older: Literal["count", "age"], bound: float) -> int:
        total = 0
        while True:
            count = await self._paced(self._store.delete_old_calls, older, bound, BATCH)
            total += count
            if count < BATCH:
                return total

    async def _paced(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one step on the writer's thread, then leave it idle as long as the step
        took: retention never has more than half of the writer, and the requests that
        arrive meanwhile are never queued behind more than one step."""
        started = time.perf_counter()
        result = await self._store.run(fn, *args, **kwargs)
        await asyncio.sleep(time.perf_counter() - started)
        return result
