"""Invocation policies: which live worker gets a call."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(eq=False)
class Node:
    """A live worker as the api sees it."""

    node_id: int
    identity: bytes
    capacity: int
    preload: str
    driver: str
    last_seen: float
    registered_at: float = field(default_factory=time.time)
    heard_at: float = field(default_factory=time.time)  # the last heartbeat, wall clock
    busy: int = 0
    queued: int = 0
    # function -> idle warm sandboxes: as the last heartbeat said, then kept current here
    # (a call placed on one takes it, a call that finishes gives one back) until the next
    idle: dict[str, int] = field(default_factory=dict)
    generic: dict[str, int] = field(default_factory=dict)  # runtime -> idle generic ones
    calls: set[int] = field(default_factory=set)  # dispatched here, not finished

    def load(self) -> float:
        return len(self.calls) / max(self.capacity, 1)

    def warm_idle(self, function: str) -> int:
        return self.idle.get(function, 0)

    def take_warm(self, function: str) -> None:
        if self.idle.get(function, 0) > 0:
            self.idle[function] -= 1

    def give_warm(self, function: str) -> None:
        self.idle[function] = self.idle.get(function, 0) + 1


class Policy(Protocol):
    def choose(self, nodes: Sequence[Node], function: str) -> Node: ...


class LeastLoaded:
    """The node with the fewest unfinished calls per unit of capacity."""

    def choose(self, nodes: Sequence[Node], function: str) -> Node:
        return min(nodes, key=lambda n: (n.load(), n.node_id))


class WarmAffinity:
    """A node with an idle sandbox warm for the function; else the least loaded."""

    def choose(self, nodes: Sequence[Node], function: str) -> Node:
        warm = [n for n in nodes if n.warm_idle(function) > 0]
        return min(warm or nodes, key=lambda n: (n.load(), n.node_id))


class RoundRobin:
    """Each live node in turn, in node-id order."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, nodes: Sequence[Node], function: str) -> Node:
        ordered = sorted(nodes, key=lambda n: n.node_id)
        return ordered[next(self._turn) % len(ordered)]


POLICIES: dict[str, type[Policy]] = {
    "warm-affinity": WarmAffinity,
    "least-loaded": LeastLoaded,
    "round-robin": RoundRobin,
}
