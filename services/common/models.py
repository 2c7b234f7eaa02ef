"""The objects fum stores and moves: runtimes, functions and calls."""

from __future__ import annotations

import hashlib
import math
import re
import time

import msgspec

from .errors import BadRequest

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

STATUSES: tuple[str, ...] = ("PENDING", "RUNNING", "DONE", "ERROR", "TIMEOUT")
FINAL_STATUSES: frozenset[str] = frozenset({"DONE", "ERROR", "TIMEOUT"})


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
    build: Build | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def setup_archive(self) -> str | None:
        """The sha256 of what its sandboxes are set up from: the package, or its build's
        artifact (code and dependencies); None while there is none yet (building, failed)."""
        if self.build is None:
            return self.sha256
        return self.build.artifact if self.build.status == "ready" else None


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
