"""``fum up`` keeps its cluster running, as compose's ``restart: unless-stopped`` does.

A service that dies is started again after a delay that doubles with each exit (from
``first_delay`` up to ``max_delay``, as Docker's restart policy), and each exit and
restart is logged. A service that exits ``crash_loop`` times within ``window`` seconds
is crash-looping: the supervisor gives up on it (``CrashLoop``) and ``fum up`` stops
with a message that names it and its last exit status.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .local import LocalCluster


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.1  # seconds before the first restart; doubled after each exit
    max_delay: float = 10.0
    crash_loop: int = 5  # exits within ``window`` seconds that make a crash loop
    window: float = 60.0


class CrashLoop(Exception):
    """A service kept dying; the message says which, how often and with what status."""


def exit_status(code: int) -> str:
    """A process's exit, as people read it: ``status 3``, ``signal 9 (SIGKILL)``."""
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


@dataclass
class Supervisor:
    """Watches the processes of ``cluster``; ``tick`` restarts the dead ones when due."""

    cluster: LocalCluster
    log: Callable[[str], None]
    on_restart: Callable[[], None] = lambda: None  # after each restart (the state file)
    policy: RestartPolicy = RestartPolicy()
    _exits: dict[str, deque[float]] = field(default_factory=dict)  # recent exit times
    _due: dict[str, float] = field(default_factory=dict)  # dead service -> restart time

    def tick(self, now: float | None = None) -> None:
        """Note the services that died since the last tick, restart those whose delay is
        over; ``CrashLoop`` when one has died too often."""
        now = time.monotonic() if now is None else now
        policy = self.policy
        for name, proc in list(self.cluster.procs.items()):
            code = proc.poll()
            if code is None or name in self._due:
                continue
            exits = self._exits.setdefault(name, deque())
            exits.append(now)
            while exits[0] < now - policy.window:
                exits.popleft()
            if len(exits) >= policy.crash_loop:
                raise CrashLoop(
                    f"{name} exited {len(exits)} times within {policy.window:g}s, the last "
                    f"with {exit_status(code)}: it is crash-looping; see "
                    f"{self.cluster.data_dir / 'logs' / (name + '.log')}"
                )
            delay = min(policy.first_delay * 2 ** (len(exits) - 1), policy.max_delay)
            self.log(f"{name} exited with {exit_status(code)}; restarting it in {delay:g}s")
            self._due[name] = now + delay
        for name, due in list(self._due.items()):
            if due <= now:
                del self._due[name]
                self.cluster.restart(name)
                self.log(f"{name} restarted (pid {self.cluster.procs[name].pid})")
                self.on_restart()

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Tick until ``stop`` is set (Ctrl-C, SIGTERM); ``CrashLoop`` ends it too."""
        while not stop.wait(interval):
            self.tick()
