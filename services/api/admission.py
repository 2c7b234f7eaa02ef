"""Admission: how many calls each function has running and waiting, and who may come in.

A function with a ``concurrency`` limit runs at most that many calls at once in the
cluster; the calls beyond it wait here, in a queue of at most ``queue`` calls (the api's
``queue_limit`` when the function sets none). Beyond that, and beyond ``max_pending``
calls held in all, a new call is refused (``Overloaded``, HTTP 429 with Retry-After)
before anything is stored. Room is reserved before the call is written to the db, so
concurrent requests cannot overshoot the bounds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from services.common.errors import Overloaded
from services.common.models import Limits

P = TypeVar("P")


class Admission(Generic[P]):
    def __init__(
        self, max_pending: int, default_queue: int, limits: Callable[[str], Limits]
    ) -> None:
        self.max_pending = max_pending
        self.default_queue = default_queue
        self._limits = limits
        self.running: dict[str, int] = {}
        self.waiting: dict[str, deque[P]] = {}
        self._reserved: dict[str, int] = {}
        self.held = 0  # running + waiting + reserved, all functions

    def reserve(self, function: str, count: int = 1) -> None:
        """Make room for ``count`` new calls of ``function``, or raise ``Overloaded``."""
        if self.held + count > self.max_pending:
            raise Overloaded(f"the cluster holds {self.held} unfinished calls, its most")
        limits = self._limits(function)
        if limits.concurrency is not None:
            queue = self.default_queue if limits.queue is None else limits.queue
            used = (
                self.running.get(function, 0)
                + len(self.waiting.get(function, ()))
                + self._reserved.get(function, 0)
            )
            if used + count > limits.concurrency + queue:
                raise Overloaded(
                    f"function {function!r} has {self.running.get(function, 0)} calls running "
                    f"and {len(self.waiting.get(function, ()))} waiting, its most"
                )
        self._reserved[function] = self._reserved.get(function, 0) + count
        self.held += count

    def release(self, function: str, count: int = 1) -> None:
        """Give back room reserved for calls that were not stored after all."""
        self._reserved[function] -= count
        self.held -= count

    def admit(self, function: str, item: P, reserved: bool = True) -> bool:
        """Take a reserved place (or a new one); whether the call may run now."""
        if reserved:
            self._reserved[function] -= 1
        else:
            self.held += 1
        limit = self._limits(function).concurrency
        if limit is not None and self.running.get(function, 0) >= limit:
            self.waiting.setdefault(function, deque()).append(item)
            return False
        self.running[function] = self.running.get(function, 0) + 1
        return True

    def finished(self, function: str) -> P | None:
        """A running call ended: the next waiting call of the function, now running."""
        self.held -= 1
        self.running[function] = self.running.get(function, 1) - 1
        queue = self.waiting.get(function)
        limit = self._limits(function).concurrency
        if queue and (limit is None or self.running[function] < limit):
            self.running[function] += 1
            item = queue.popleft()
            if not queue:
                del self.waiting[function]
            return item
        return None

    def runnable(self, function: str) -> list[P]:
        """Waiting calls that may run now (after the function's concurrency was raised)."""
        queue = self.waiting.get(function)
        limit = self._limits(function).concurrency
        ready: list[P] = []
        while queue and (limit is None or self.running.get(function, 0) < limit):
            self.running[function] = self.running.get(function, 0) + 1
            ready.append(queue.popleft())
        if function in self.waiting and not queue:
            del self.waiting[function]
        return ready
