"""The worker <-> miniworker channel (worker ROUTER, miniworker DEALER named by its id).

All events: a miniworker says what it is warm for, is handed calls (one ``Run`` at a
time, of one call or a batch) and reports their outcomes; its liveness is its process
plus ``Alive`` beats with a deadline.
"""

from __future__ import annotations

from .models import Call, Function, Runtime
from .protocol import Message, Protocol

# ---- miniworker -> worker


class Ready(Message, frozen=True):
    """Idle, and warm for ``function`` (or, with only ``runtime``, generic for it)."""

    runtime: str | None = None
    function: str | None = None
    sha256: str | None = None


class PrepareFailed(Message, frozen=True):
    error: str


class Outcome(Message, frozen=True):
    """How one call ended in the sandbox."""

    call_num: int
    status: str
    result: bytes | None = None
    error: str | None = None
    logs: str = ""
    start: str = "warm"
    init_ms: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    retryable: bool = False  # the sandbox died under the call: another may run it


class CallDone(Message, frozen=True):
    """Calls of a ``Run`` that are over (several when they ended close together)."""

    outcomes: list[Outcome]
    # The sandbox is done with the Run and good for the next one (no Ready follows);
    # False: more of the Run's calls are to come, or (with ``unrun``) the sandbox is
    # being started again, and a Ready (or PrepareFailed) follows.
    ready: bool = False
    # Calls of the Run the sandbox never began (it died or timed out on an earlier one):
    # the worker queues them again, as they were.
    unrun: list[int] = []


class Alive(Message, frozen=True):
    pass


# ---- worker -> miniworker


class Prepare(Message, frozen=True):
    """Start a sandbox of ``runtime``; with ``function``, set it up for that function too."""

    runtime: Runtime
    function: Function | None = None
    # the folder of the node's store holding its files (its package, or build's artifact)
    package: str | None = None


class Run(Message, frozen=True):
    """Run these calls, in order, one at a time (all of ``function``, each within
    ``timeout``): a batch when many wait for a function whose calls are short."""

    calls: list[Call]
    timeout: float
    runtime: Runtime
    function: Function
    package: str  # as in Prepare


class Stop(Message, frozen=True):
    pass


POOL_PROTOCOL = Protocol(
    "pool",
    Ready,
    PrepareFailed,
    CallDone,
    Alive,
    Prepare,
    Run,
    Stop,
)
