"""The db channel: every request the db answers, and its replies."""

from __future__ import annotations

from .models import Call, CallUpdate, Function, NewCall, Runtime
from .protocol import Message, Protocol

# ---- requests


class Ping(Message, frozen=True):
    pass


class PutRuntime(Message, frozen=True):
    runtime: Runtime


class GetRuntime(Message, frozen=True):
    name: str


class ListRuntimes(Message, frozen=True):
    pass


class DeleteRuntime(Message, frozen=True):
    name: str


class PutFunction(Message, frozen=True):
    function: Function


class GetFunction(Message, frozen=True):
    name: str


class ListFunctions(Message, frozen=True):
    pass


class DeleteFunction(Message, frozen=True):
    name: str


class CreateCalls(Message, frozen=True):
    calls: list[NewCall]


class ReserveCallNums(Message, frozen=True):
    """Set ``count`` call numbers aside for the asker, never to be given again."""

    count: int


class UpdateCalls(Message, frozen=True):
    updates: list[CallUpdate]


class GetCall(Message, frozen=True):
    call_num: int


class GetCalls(Message, frozen=True):
    """Several calls at once; numbers that do not exist are left out of the reply."""

    call_nums: list[int]


class FindCalls(Message, frozen=True):
    """The calls of these uuids (an idempotent invoke's); unknown ones are left out."""

    uuids: list[str]


class GetCallLogs(Message, frozen=True):
    call_num: int


class ListCalls(Message, frozen=True):
    """Calls newest first (``oldest_first``: the other way); ``before`` and ``after``
    bound the call number (the cursor of the next page either way)."""

    func_name: str | None = None
    status: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 100
    oldest_first: bool = False


# ---- replies


class Pong(Message, frozen=True):
    started_at: float


class RuntimeReply(Message, frozen=True):
    runtime: Runtime
    created: bool = False


class RuntimeList(Message, frozen=True):
    runtimes: list[Runtime]


class FunctionReply(Message, frozen=True):
    function: Function
    created: bool = False


class FunctionList(Message, frozen=True):
    functions: list[Function]


class Deleted(Message, frozen=True):
    name: str


class CallsCreated(Message, frozen=True):
    calls: list[Call]


class CallNumsReserved(Message, frozen=True):
    """The reserved numbers are ``first`` to ``first + count - 1``."""

    first: int


class CallsUpdated(Message, frozen=True):
    """For each update, in order: whether it changed the stored call."""

    applied: list[bool]


class CallReply(Message, frozen=True):
    call: Call


class CallLogs(Message, frozen=True):
    call_num: int
    logs: str


class CallList(Message, frozen=True):
    calls: list[Call]


DB_PROTOCOL = Protocol(
    "db",
    Ping,
    PutRuntime,
    GetRuntime,
    ListRuntimes,
    DeleteRuntime,
    PutFunction,
    GetFunction,
    ListFunctions,
    DeleteFunction,
    CreateCalls,
    ReserveCallNums,
    UpdateCalls,
    GetCall,
    GetCalls,
    FindCalls,
    GetCallLogs,
    ListCalls,
    Pong,
    RuntimeReply,
    RuntimeList,
    FunctionReply,
    FunctionList,
    Deleted,
    CallsCreated,
    CallNumsReserved,
    CallsUpdated,
    CallReply,
    CallLogs,
    CallList,
)
