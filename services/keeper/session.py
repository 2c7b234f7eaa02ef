"""Sessions: ids, passwords, negotiated timeouts and the clock that expires them.

A session outlives its connections: a client that loses its connection reconnects
with the session's id and password within the timeout and keeps its session (and so
its ephemeral nodes); every packet it sends pushes the deadline back by the timeout.
A session whose deadline passes expires, checked each tick as ZooKeeper's
SessionTracker does; the server then ends it like a ``close`` (its ephemerals go).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection


@dataclass(eq=False)
class Session:
    id: int
    passwd: bytes
    timeout: int  # ms, as negotiated
    deadline: float = 0.0  # time.monotonic() past which it expires
    connection: Connection | None = field(default=None, repr=False)
    ended: bool = False

    def touch(self) -> None:
        self.deadline = time.monotonic() + self.timeout / 1000


class Sessions:
    """The live sessions by id, and the next id to give."""

    def __init__(self, next_id: int) -> None:
        self.by_id: dict[int, Session] = {}
        # ZooKeeper's initial id (server id 0): the time in ms, shifted, so that ids stay
        # unique across restarts; never lower than the stored next id.
        self.next_id = max(next_id, ((int(time.time() * 1000) << 24) & (2**64 - 1)) >> 8)

    def create(self, timeout: int) -> Session:
        session = Session(self.next_id, os.urandom(16), timeout)
        self.next_id += 1
        session.touch()
        self.by_id[session.id] = session
        return session

    def restore(self, sid: int, passwd: bytes, timeout: int) -> Session:
        """A session read back at start: it gets a whole timeout to reconnect."""
        session = Session(sid, passwd, timeout)
        session.touch()
        self.by_id[sid] = session
        return session

    def expired(self) -> list[Session]:
        now = time.monotonic()
        return [s for s in self.by_id.values() if s.deadline <= now and not s.ended]
