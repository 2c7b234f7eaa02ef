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

Asking the db about every new key would cost a round trip on every invoke (the SDK
sends a key with each). So each start of the api has an **epoch**, a random token it
sends on every answer (``Fum-Epoch``); a client may begin its keys with it
(``EPOCH.rest``). Such a key cannot have been sent before this api started, so if this
api has not seen it (its memory, and a Bloom filter of what it forgot), it is new, and
no db read is needed. A key of another epoch (sent again after a restart) or of none
is looked up in the db, as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import NamedTuple

from services.common.errors import BadRequest, Unprocessable

HEADER = "Idempotency-Key"
EPOCH_HEADER = "Fum-Epoch"
MAX_KEY = 200
REMEMBERED = 100_000  # recent keys' calls kept in memory (the db has the rest)


class IdempotencyMismatch(Unprocessable):
    code = "idempotency_mismatch"


class Keyed(NamedTuple):
    """What a key stood for: its call, and what was asked of it (params by digest)."""

    call_num: int
    func_name: str
    params: bytes

    def same(self, func_name: str, params: bytes) -> bool:
        return (self.func_name, self.params) == (func_name, digest(params))


def digest(params: bytes) -> bytes:
    return hashlib.sha256(params).digest()


class Forgotten:
    """A Bloom filter of the keys evicted from memory: "maybe seen" (then the db is
    asked) or "never seen". 8 MiB, four probes: about 2 % false "maybe" after 8M keys,
    and each false answer costs only the db read every key would cost without it."""

    BITS = 1 << 26

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def _probes(self, uuid: str) -> list[int]:
        raw = hashlib.blake2b(uuid.encode(), digest_size=16).digest()
        return [int.from_bytes(raw[i : i + 4], "little") % self.BITS for i in range(0, 16, 4)]

    def add(self, uuid: str) -> None:
        for bit in self._probes(uuid):
            self._bits[bit >> 3] |= 1 << (bit & 7)

    def __contains__(self, uuid: str) -> bool:
        return all(self._bits[bit >> 3] & (1 << (bit & 7)) for bit in self._probes(uuid))


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
        self.epoch = secrets.token_hex(8)
        self._forgotten = Forgotten()
        self._recent: OrderedDict[str, Keyed] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # uuid -> lock, users

    def get(self, uuid: str) -> Keyed | None:
        return self._recent.get(uuid)

    def unseen(self, uuid: str, key: str) -> bool:
        """Whether ``key`` (whose call is ``uuid``) is certainly new: minted in this epoch
        and never seen by this api (so the db cannot know it)."""
        return (
            key.startswith(self.epoch)
            and key[len(self.epoch) : len(self.epoch) + 1] == "."
            and uuid not in self._recent
            and uuid not in self._forgotten
        )

    def seen(self, uuid: str) -> None:
        """Mark a key seen whose calls the db has (a batch's): a repeat asks the db."""
        self._forgotten.add(uuid)

    def remember(self, uuid: str, call_num: int, func_name: str, params: bytes) -> None:
        self._recent[uuid] = Keyed(call_num, func_name, digest(params))
        if len(self._recent) > REMEMBERED:
            forgotten, _ = self._recent.popitem(last=False)
            self._forgotten.add(forgotten)

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
