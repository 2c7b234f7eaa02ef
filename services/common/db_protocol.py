"""The db channel: every request the db answers, and its replies."""

from __future__ import annotations

from services.triggers.coordinators import Execution, NewExecution
from services.triggers.events import Event, EventIn
from services.triggers.triggers import Trigger, TriggerIn

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


class PublishEvents(Message, frozen=True):
    """Store events (and run them through their triggers) before answering."""

    events: list[EventIn]


class ListEvents(Message, frozen=True):
    """Events newest first; ``before`` pages back by ``seq``."""

    subject: str | None = None
    type: str | None = None
    before: int | None = None
    limit: int = 100


class PutTrigger(Message, frozen=True):
    id: str
    trigger: TriggerIn


class GetTrigger(Message, frozen=True):
    id: str


class ListTriggers(Message, frozen=True):
    """Triggers by id; ``after`` pages on."""

    active: bool | None = None
    subject: str | None = None
    execution: str | None = None
    after: str | None = None
    limit: int = 100


class DeleteTrigger(Message, frozen=True):
    id: str


class StartExecution(Message, frozen=True):
    execution: NewExecution
    caller: str | None = None


class GetExecution(Message, frozen=True):
    id: str


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
    """For each update, in order: whether it changed the stored call. ``placed``: calls
    the ends of these calls made (triggers' actions), for the api to place."""

    applied: list[bool]
    placed: list[Call] = []


class EventsPublished(Message, frozen=True):
    events: list[Event]
    placed: list[Call] = []


class EventList(Message, frozen=True):
    events: list[Event]


class TriggerReply(Message, frozen=True):
    trigger: Trigger
    created: bool = False


class TriggerList(Message, frozen=True):
    triggers: list[Trigger]


class ExecutionReply(Message, frozen=True):
    execution: Execution
    created: bool = False
    placed: list[Call] = []


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
    PublishEvents,
    ListEvents,
    PutTrigger,
    GetTrigger,
    ListTriggers,
    DeleteTrigger,
    StartExecution,
    GetExecution,
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
    EventsPublished,
    EventList,
    TriggerReply,
    TriggerList,
    ExecutionReply,
)
