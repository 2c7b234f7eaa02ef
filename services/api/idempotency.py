"""Idempotent invokes: one call per ``Idempotency-Key``, whatever is sent twice.

A client that does not know whether its invoke arrived (the connection broke after the
request went out) sends it again with the same key, and gets the same call. The key of
a caller (the API key's name) names the call's uuid, which the db keeps unique: a
repeated key finds its call there, across restarts of any service, for as long as the
call is stored. A blocking call is stored only once it ends (or outlasts
FUM_STORE_DELAY, docs/SCHEDULING.md), so the calls of recent keys are also remembered
here; and requests with one key are taken one at a time, so two sent at once are one
call too. The same key sent with another function or other params is a client's
mistake: 422, ``idempotency_mismatch``, nothing run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import NamedTuple

from services.common.errors import BadRequest, Unprocessable

HEADER = "Idempotency-Key"
MAX_KEY = 200
REMEMBERED = 100_000  # recent keys' calls kept in memory (the db has the rest)


class IdempotencyMismatch(Unprocessable):
    code = "idempotency_mismatch"


class Keyed(NamedTuple):
    """What a key stood for: its call, and what was asked of it."""

    call_num: int
    func_name: str
    params: bytes


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY or not all(" " < c <= "~" for c in key):
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters")
    return key


def call_uuid(caller: str | None, key: str, index: int | None = None) -> str:
    """The uuid of the call a caller's key stands for (the ``index``-th of a batch)."""
    scope = f"{caller or ''}\x00{key}" + ("" if index is None else f"\x00{index}")
    return "k" + hashlib.sha256(scope.encode()).hexdigest()[:31]


def mismatch(key: str) -> IdempotencyMismatch:
    return IdempotencyMismatch(
        f"{HEADER} {key!r} was used for another invoke (another function or other params)"
    )


class Keys:
    """The api's memory of recent keys, and one request at a time per key."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, Keyed] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # uuid -> lock, users

    def get(self, uuid: str) -> Keyed | None:
        return self._recent.get(uuid)

    def remember(self, uuid: str, keyed: Keyed) -> None:
        self._recent[uuid] = keyed
        if len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)

    @contextlib.asynccontextmanager
    async def taken(self, uuid: str) -> AsyncIterator[None]:
        """Hold the key while a request decides (and makes) its call."""
        lock, users = self._locks.setdefault(uuid, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[uuid]
