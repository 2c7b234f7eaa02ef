"""The api <-> worker channel (api ROUTER, worker DEALER whose identity is its node id).

Requests (``Register``, ``Heartbeat``) get one reply each. Everything else is an event:
pushes addressed to one worker, and results back to the api.
"""

from __future__ import annotations

from .models import Call, Function, Runtime
from .protocol import Message, Protocol

# ---- worker -> api requests


class Register(Message, frozen=True):
    node_id: int
    capacity: int
    preload: str
    driver: str
    running: list[int] = []  # calls this worker still holds (after an api restart)


class Heartbeat(Message, frozen=True):
    node_id: int
    capacity: int
    busy: int  # sandboxes running a call
    queued: int  # calls waiting on this node for a sandbox
    idle: dict[str, int] = {}  # function -> sandboxes warm for it and idle
    generic: dict[str, int] = {}  # runtime -> idle generic sandboxes (runtime preload)
    # What the api's placement estimates a call's wait on this node from (the same
    # estimate as the node's own, services/common/estimate.py), per function:
    sandboxes: dict[str, int] = {}  # sandboxes warm for it or starting for it
    durations: dict[str, float] = {}  # mean seconds of its calls
    # seconds its next sandbox here is expected to start in ("": a cold start of any)
    starts: dict[str, float] = {}


# ---- api -> worker replies


class Registered(Message, frozen=True):
    heartbeat_interval: float


class HeartbeatAck(Message, frozen=True):
    pass


# ---- api -> worker events


class CatalogSynced(Message, frozen=True):
    """The whole catalogue, sent on registration before the reply, so that it stays in
    order with the changes that follow it on the same channel."""

    runtimes: list[Runtime]
    functions: list[Function]


class Dispatch(Message, frozen=True):
    call: Call
    timeout: float
    # The call was dispatched once only, so no other run of it can exist: the worker may
    # tell the api its result before the db has it (the api answers sooner).
    early: bool = False
    # False: the db may not hold the call yet (a blocking call, which the api stores only
    # if it outlasts FUM_STORE_DELAY): the worker's writes carry it, to create it first.
    stored: bool = True


class RuntimeSynced(Message, frozen=True):
    runtime: Runtime


class RuntimeRemoved(Message, frozen=True):
    name: str


class FunctionSynced(Message, frozen=True):
    function: Function


class FunctionRemoved(Message, frozen=True):
    name: str


class BuildRequested(Message, frozen=True):
    """Run the build ``key`` of ``function`` (its package) on ``runtime``, upload the
    artifact to the api's package store and say ``BuildFinished``."""

    key: str
    runtime: Runtime
    function: Function


# ---- worker -> api events


class CallFinished(Message, frozen=True):
    """A call reached a final status and the db has it."""

    call: Call


class BuildFinished(Message, frozen=True):
    """A build is over: ``artifact`` (uploaded to the api, by sha256) when it worked,
    else None; ``log``: the tail of its output (and why it failed)."""

    key: str
    artifact: str | None
    log: str


class PlaceCalls(Message, frozen=True):
    """Calls the db created PENDING on a worker's request (a workflow's next steps, a
    trigger's action): the api places those it does not hold yet."""

    calls: list[Call]


class HoldCalls(Message, frozen=True):
    """Calls the db created PENDING on a worker's request that it runs itself (a durable
    coordinator's next run or lone step, for which it has an idle sandbox): the api
    records them as placed on it, to place them again if the worker dies."""

    calls: list[Call]


class SessionEnded(Message, frozen=True):
    """A workflow session ended on this worker's db request (services/workflows): the api
    answers who waits for it."""

    session: str
    status: str


NODE_PROTOCOL = Protocol(
    "node",
    Register,
    Heartbeat,
    Registered,
    HeartbeatAck,
    CatalogSynced,
    Dispatch,
    RuntimeSynced,
    RuntimeRemoved,
    FunctionSynced,
    FunctionRemoved,
    BuildRequested,
    CallFinished,
    BuildFinished,
    PlaceCalls,
    HoldCalls,
    SessionEnded,
)
