"""What the api answers, as typed objects (camelCase on the wire, snake_case here).

Fields the api adds later are ignored, never an error; ``to_dict()`` gives the JSON
shape back (camelCase keys), as the CLI's ``--json`` prints it.
"""

from __future__ import annotations

from typing import Any

import msgspec

FINAL_STATUSES = frozenset({"DONE", "ERROR", "TIMEOUT", "WAITING"})
STATUSES = ("PENDING", "RUNNING", "DONE", "ERROR", "TIMEOUT", "WAITING")


class Model(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of the api's objects."""

    def to_dict(self) -> dict[str, Any]:
        """The object as the api's JSON (camelCase keys)."""
        data = msgspec.to_builtins(self)
        assert isinstance(data, dict)
        return data


class Runtime(Model, frozen=True):
    """A container image plus the commands that install (``dependencies``) and ``run``."""

    name: str
    image: str
    run: str
    path: str = "/ws"
    dependencies: str = ""
    created_at: str | None = None
    updated_at: str | None = None


class Build(Model, frozen=True):
    """A function's build: its runtime's dependencies command, run once at deploy time."""

    status: str  # building, ready or failed
    log: str = ""
    artifact: str | None = None
    key: str = ""
    runs: int = 0
    node_id: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


class Function(Model, frozen=True):
    """A package of code bound to a runtime; ``limits`` as the api reports them;
    ``build`` None when its runtime installs nothing."""

    name: str
    runtime: str
    sha256: str
    filename: str
    size: int
    limits: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    build: Build | None = None


class Call(Model, frozen=True):
    """One invocation: ``params`` and ``result`` are the JSON values, decoded."""

    call_num: int
    func_name: str
    status: str
    params: Any = None
    result: Any = None
    error: str | None = None
    node_id: int | None = None
    attempts: int = 0
    start: str | None = None
    init_ms: float | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    wait_ms: float | None = None

    @property
    def final(self) -> bool:
        """Whether the call has ended (DONE, ERROR or TIMEOUT)."""
        return self.status in FINAL_STATUSES


class Node(Model, frozen=True):
    """A live worker: its load and its warm sandboxes (function or runtime name -> count)."""

    node_id: int
    capacity: int = 0
    preload: str = ""
    driver: str = ""
    busy: int = 0
    queued: int = 0
    in_flight: int = 0
    idle: dict[str, Any] = msgspec.field(default_factory=dict)
    generic: dict[str, Any] = msgspec.field(default_factory=dict)
    registered_at: str | None = None
    heard_at: str | None = None


class CallPage(Model, frozen=True):
    """One page of calls, newest first; ``next`` is the path of the next page, if any."""

    items: list[Call]
    next: str | None = None


class RuntimePage(Model, frozen=True):
    """One page of runtimes in name order; ``next`` is the path of the next page, if any."""

    items: list[Runtime]
    next: str | None = None


class FunctionPage(Model, frozen=True):
    """One page of functions in name order; ``next`` is the path of the next page, if any."""

    items: list[Function]
    next: str | None = None


class WaitResult(Model, frozen=True):
    """The calls that finished, and the numbers of those still pending."""

    done: list[Call]
    pending: list[int]


class Health(Model, frozen=True):
    """``GET /healthz``: the api and its db answer; how many workers are registered; where
    the cluster's keeper is (``host:port``, None when it has none)."""

    status: str
    nodes: int = 0
    keeper: str | None = None


class _Items(msgspec.Struct):
    items: list[Any]


class _CallNums(msgspec.Struct, rename="camel"):
    call_nums: list[int]


class _Logs(msgspec.Struct, rename="camel"):
    call_num: int
    logs: str


SESSION_FINAL = frozenset({"DONE", "ERROR", "CANCELLED"})


class App(Model, frozen=True):
    """A workflow app as deployed: its Start function and its functions' fum names."""

    name: str
    start: str
    functions: list[str] = msgspec.field(default_factory=list)
    runtime: str = ""


class SessionInstance(Model, frozen=True):
    """One function instance of a session, with its call."""

    name: str
    call_num: int
    func_name: str
    status: str
    result: Any = None
    error: str | None = None
    ends: bool = False


class Session(Model, frozen=True):
    """One run of a workflow app; ``instances`` is None in a list of sessions."""

    id: str
    app: str
    status: str
    result: Any = None
    error: str | None = None
    created_at: str | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    instances: list[SessionInstance] | None = None

    @property
    def final(self) -> bool:
        """Whether the session has ended (DONE, ERROR or CANCELLED)."""
        return self.status in SESSION_FINAL
