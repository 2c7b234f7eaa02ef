"""The objects fum stores and moves: runtimes, functions and calls."""

from __future__ import annotations

import hashlib
import math
import re
import time

import msgspec

from .errors import BadRequest

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# WAITING: a durable coordinator's run that ended to wait for its calls (it holds no
# sandbox; a trigger runs the coordinator again as a new call, services/triggers/).
STATUSES: tuple[str, ...] = ("PENDING", "RUNNING", "DONE", "ERROR", "TIMEOUT", "WAITING")
FINAL_STATUSES: frozenset[str] = frozenset({"DONE", "ERROR", "TIMEOUT", "WAITING"})


class Model(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of stored objects: camelCase on the wire, like the original design's JSON."""


def check_name(kind: str, name: str) -> str:
    """Names end up in paths and container names: letters, digits, ``_.-`` only."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def now() -> float:
    return time.time()


class Runtime(Model, frozen=True):
    """A container image plus the commands that install and run a function in ``path``."""

    name: str
    image: str
    run: str
    path: str = "/ws"
    dependencies: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def spec(self) -> tuple[str, str, str, str]:
        """What its sandboxes are made of: the same spec, the same sandboxes (a runtime put
        again unchanged keeps its generic ones)."""
        return (self.image, self.path, self.dependencies, self.run)


class Limits(Model, frozen=True):
    """Per-function limits, set at upload and updatable; ``None`` means no limit."""

    timeout: float = 60.0  # seconds a call may run
    memory: int | None = None  # MiB of one sandbox
    cpus: float | None = None  # of one sandbox
    pids: int | None = None  # of one sandbox
    concurrency: int | None = None  # most calls running at once, in the whole cluster
    queue: int | None = None  # most calls waiting beyond that (None: the api's default)
    min_warm: int = 0  # sandboxes set up for it that each node keeps, busy or not
    max_containers: int | None = None  # most sandboxes of it on one node

    def check(self) -> Limits:
        """Raise ``BadRequest`` for a limit that cannot be met, or is not a finite number
        in its range (``LIMIT_RANGES``): what is stored must always be read back."""
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            low, high = LIMIT_RANGES[field.name]
            if not (math.isfinite(value) and low <= value <= high):
                raise BadRequest(f"{field.encode_name} must be a number from {low} to {high:g}")
        if self.max_containers is not None and self.min_warm > self.max_containers:
            raise BadRequest("minWarm cannot exceed maxContainers")
        return self


# The range of each limit (inclusive). Zero is no limit's meaning: None is.
LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "timeout": (0.001, 7 * 24 * 3600),
    "memory": (1, 1 << 20),  # MiB: up to 1 TiB
    "cpus": (0.01, 1024),
    "pids": (1, 1 << 22),
    "concurrency": (1, 1_000_000),
    "queue": (0, 10_000_000),
    "min_warm": (0, 1000),
    "max_containers": (1, 100_000),
}


# Limits as clients name them (JSON and form fields): timeout, minWarm, maxContainers...
LIMIT_NAMES: tuple[str, ...] = tuple(f.encode_name for f in msgspec.structs.fields(Limits))


class NextStep(Model, frozen=True):
    """One continuation of a workflow step (unum's ``Next`` entry), as checked at deploy."""

    name: str  # the function's name in its app
    input_type: str = "Scalar"  # "Scalar", "Map" or "Fan-in"
    values: list[str] = []  # a fan-in's instance names, in the order its input lists them
    conditional: str | None = None


class Step(Model, frozen=True):
    """What a function of a workflow app does after it returns (its ``unum_config.json``):
    the worker that ran it carries this out (services/workflows/continuation.py)."""

    app: str
    name: str  # the function's name in its app; the fum function is ``<app>.<name>``
    start: bool = False
    checkpoint: bool = True
    next: list[NextStep] = []
    parallel: bool = False  # ``Next`` was a list: its Scalar entries are a parallel fan-out
    modifiers: list[str] = []  # Next Payload Modifiers

    @property
    def function(self) -> str:
        return f"{self.app}.{self.name}"


SESSION_STATUSES: tuple[str, ...] = ("RUNNING", "DONE", "ERROR", "CANCELLED")


class Session(Model, frozen=True):
    """One run of a workflow app: from its Start instance to the last one."""

    id: str  # uuid4 hex
    app: str
    status: str = "RUNNING"
    result: bytes | None = None  # JSON: the output of the instance(s) that sent nothing on
    error: str | None = None  # ERROR: the instance that failed, and its error
    created_at: float = 0.0
    finished_at: float | None = None


class SessionInstance(Model, frozen=True):
    """One function instance of a session and its call, as it stands."""

    name: str  # <Name>, or <Name>-unumIndex-<i0>.<i1>...
    call_num: int
    func_name: str
    status: str
    result: bytes | None = None
    error: str | None = None
    ends: bool = False  # sent nothing on: its output is (part of) the session's result


class NextInstance(Model, frozen=True):
    """An instance a step sends on: its call's uuid (made from the session and the
    instance name, so sending it twice makes one call), function and params."""

    instance: str
    uuid: str
    func_name: str
    params: bytes


class FanInSlot(Model, frozen=True):
    """A step's slot in the set of a fan-in it feeds. The step that fills the set creates
    the fan-in's call: ``target`` with the sources' outputs, in slot order, as its Data."""

    target: NextInstance  # params: the payload without its Data
    slot: int  # the step's place among the fan-in's Values, as they expand
    size: int


BUILD_STATUSES: tuple[str, ...] = ("building", "ready", "failed")
BUILD_LOG_LIMIT = 16 * 1024  # characters of a build's output kept (its tail)


class Build(Model, frozen=True):
    """The build of a function: its runtime's ``dependencies`` command run once, at deploy
    time, on the function's package; the runtime's ``path`` as the command left it is the
    ``artifact`` (a tar.gz in the package store, by sha256) that sandboxes are set up from.
    ``key`` names what it was built from (``build_key``): the same key, the same build."""

    key: str
    status: str = "building"  # building -> ready | failed
    artifact: str | None = None
    log: str = ""  # the tail of the command's output
    runs: int = 0  # times a node was asked to run it (1 unless a node was lost meanwhile)
    node_id: int | None = None  # the node that ran it (last)
    started_at: float | None = None
    finished_at: float | None = None


def build_key(runtime: Runtime, package_sha256: str) -> str | None:
    """What a build depends on: the runtime's image (its name or name@digest), its path and
    dependencies command, and the package; None when the runtime installs nothing."""
    if not runtime.dependencies.strip():
        return None
    spec = "\x00".join(("fum-build-1", runtime.image, runtime.path, runtime.dependencies))
    return hashlib.sha256(f"{spec}\x00{package_sha256}".encode()).hexdigest()


class Function(Model, frozen=True):
    """A package of code bound to a runtime, stored by the sha256 of its bytes; ``build``:
    its dependencies' build (None: its runtime has no dependencies command)."""

    name: str
    runtime: str
    sha256: str
    filename: str
    size: int
    limits: Limits = Limits()
    workflow: Step | None = None  # set for a function of a workflow app (PUT /v1/apps)
    build: Build | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def setup_archive(self) -> str | None:
        """The sha256 of what its sandboxes are set up from: the package, or its build's
        artifact (code and dependencies); None while there is none yet (building, failed)."""
        if self.build is None:
            return self.sha256
        return self.build.artifact if self.build.status == "ready" else None

    def stored_files(self) -> set[str]:
        """The sha256s of what is kept for it (by the api, and by a node that runs it): its
        package and its build's artifact."""
        archive = self.setup_archive()
        return {self.sha256} if archive is None else {self.sha256, archive}


class Call(Model, frozen=True):
    """One invocation. ``params`` and ``result`` are JSON text, passed along unparsed."""

    call_num: int
    uuid: str
    func_name: str
    params: bytes
    status: str = "PENDING"
    result: bytes | None = None
    error: str | None = None
    node_id: int | None = None
    attempts: int = 0
    # How its sandbox was found: "warm" (set up for the function), "specialized" (a generic
    # sandbox of its runtime, set up on this call) or "cold" (started on this call).
    start: str | None = None
    init_ms: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    caller: str | None = None  # the name of the API key that created it (None: open api)


class NewCall(Model, frozen=True):
    """What the api asks the db to create; ``uuid`` makes a retried create idempotent.
    ``call_num``: a number the api reserved (``ReserveCallNums``); None, the db numbers it."""

    uuid: str
    func_name: str
    params: bytes
    created_at: float
    call_num: int | None = None
    caller: str | None = None

    @classmethod
    def of(cls, call: Call) -> NewCall:
        """The create that stores ``call`` as it was first made."""
        return cls(
            uuid=call.uuid,
            func_name=call.func_name,
            params=call.params,
            created_at=call.created_at,
            call_num=call.call_num,
            caller=call.caller,
        )

    def pending(self, call_num: int) -> Call:
        """The call as it is created: numbered ``call_num``, PENDING, never run."""
        return Call(
            call_num=call_num,
            uuid=self.uuid,
            func_name=self.func_name,
            params=self.params,
            created_at=self.created_at,
            caller=self.caller,
        )


class CallUpdate(Model, frozen=True):
    """A change to a call. Fields left ``None`` are kept as stored.

    An update to a final status applies only while the stored call is not final yet, so a
    call can never be reported DONE twice with two different results. ``new``: the call
    to create first if the db does not hold it (a blocking call the api did not store).
    """

    call_num: int
    status: str
    node_id: int | None = None
    attempts: int | None = None
    result: bytes | None = None
    error: str | None = None
    logs: str | None = None
    start: str | None = None
    init_ms: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    new: NewCall | None = None

    @classmethod
    def storing(cls, call: Call, logs: str | None = None, new: NewCall | None = None) -> CallUpdate:
        """The update that stores ``call`` (a finished one) as it is, with its output."""
        return cls(
            call_num=call.call_num,
            status=call.status,
            node_id=call.node_id,
            attempts=call.attempts,
            result=call.result,
            error=call.error,
            logs=logs,
            start=call.start,
            init_ms=call.init_ms,
            started_at=call.started_at,
            finished_at=call.finished_at,
            new=new,
        )
