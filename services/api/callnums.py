"""Call numbers the api gives out itself, from blocks the db sets aside.

A blocking invoke numbers its call here, so it can hand the call to a worker while the db
stores it, instead of waiting for the db to number it first (one db round trip off every
blocking call's path). The db keeps what it set aside: a number is never given twice,
even when the api restarts with part of a block unused (a gap, as with any sequence).
"""

from __future__ import annotations

import asyncio

from services.common.db_client import DbClient
from services.common.tasks import retrying

BLOCK = 1000  # numbers set aside per db request


class CallNumbers:
    def __init__(self, db: DbClient, deadline: float, block: int = BLOCK) -> None:
        self._db = db
        self._deadline = deadline
        self._block = block
        self._next = self._end = 0
        self._refill: asyncio.Future[None] | None = None

    async def take(self) -> int:
        """The next number; waits for the db only when the block in hand is used up."""
        while self._next >= self._end:
            if self._refill is None:
                self._refill = asyncio.ensure_future(self._reserve())
            await asyncio.shield(self._refill)
        num = self._next
        self._next += 1
        return num

    async def _reserve(self) -> None:
        try:
            first = await retrying(
                lambda: self._db.reserve_call_nums(self._block), self._deadline, "reserve numbers"
            )
            self._next, self._end = first, first + self._block
        finally:
            self._refill = None
