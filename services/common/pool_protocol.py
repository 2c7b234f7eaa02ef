"""The worker <-> miniworker channel (worker ROUTER, miniworker DEALER named by its id).

All events: a miniworker says what it is warm for, is handed one call at a time and
reports each outcome; its liveness is its process plus ``Alive`` beats with a deadline.
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
    outcome: Outcome
    # The sandbox is good for the next call now (no Ready follows); False: it is being
    # started again, and a Ready (or PrepareFailed) follows.
    ready: bool = False


class Alive(Message, frozen=True):
    pass


# ---- worker -> miniworker


class Prepare(Message, frozen=True):
    """Start a sandbox of ``runtime``; with ``function``, set it up for that function too."""

    runtime: Runtime
    function: Function | None = None
    package: str | None = None  # path of the verified package on this node


class Run(Message, frozen=True):
    call: Call
    timeout: float
    runtime: Runtime
    function: Function
    package: str


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
