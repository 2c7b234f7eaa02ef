"""Invocation policies: which live worker gets a call."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.estimate import expected_start, expected_wait


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
    pending: dict[str, int] = field(default_factory=dict)  # those calls, by function
    # as the last heartbeat said (Heartbeat): per function, its sandboxes here, its calls'
    # mean seconds, and what its next sandbox here is expected to take to start
    sandboxes: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)

    def load(self) -> float:
        return len(self.calls) / max(self.capacity, 1)

    def add_call(self, call_num: int, function: str) -> None:
        self.calls.add(call_num)
        self.pending[function] = self.pending.get(function, 0) + 1

    def drop_call(self, call_num: int, function: str) -> None:
        if call_num in self.calls:
            self.calls.discard(call_num)
            left = self.pending.get(function, 0) - 1
            if left > 0:
                self.pending[function] = left
            else:
                self.pending.pop(function, None)

    def expected_start(self, function: str) -> float:
        """Seconds a new call of the function is expected to wait here before it begins:
        on the sandboxes it has, or for a new one (none when the node is full)."""
        wait = expected_wait(
            self.pending.get(function, 0),
            self.sandboxes.get(function, 0),
            self.durations.get(function),
        )
        start = math.inf if self.load() >= 1 else self.starts.get(function, self.starts.get(""))
        return expected_start(wait, start)

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
    """A node with an idle sandbox warm for the function; else the node where the call is
    expected to begin soonest (waiting on the function's sandboxes there, or for a new
    one: the estimate the node's pool uses); ties go to the least loaded."""

    def choose(self, nodes: Sequence[Node], function: str) -> Node:
        warm = [n for n in nodes if n.warm_idle(function) > 0]
        if warm:
            return min(warm, key=lambda n: (n.load(), n.node_id))
        return min(nodes, key=lambda n: (n.expected_start(function), n.load(), n.node_id))


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
