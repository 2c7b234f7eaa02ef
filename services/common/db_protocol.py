"""The db channel: every request the db answers, and its replies."""

from __future__ import annotations

from services.triggers.coordinators import Execution, NewExecution
from services.triggers.events import Event, EventIn
from services.triggers.triggers import Trigger, TriggerIn

from .models import (
    Call,
    CallUpdate,
    FanInSlot,
    Function,
    NewCall,
    NextInstance,
    Runtime,
    Session,
    SessionInstance,
)
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
    bound the call number (the cursor of the next page either way); ``since`` and
    ``until`` the time each was made (seconds since the epoch, until excluded)."""

    func_name: str | None = None
    status: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 100
    oldest_first: bool = False
    since: float | None = None
    until: float | None = None


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


class ListExecutions(Message, frozen=True):
    """Executions newest first, without their steps; ``before``: made before that time."""

    before: float | None = None
    limit: int = 100


# ---- workflow sessions (services/workflows/checkpoint.py)


class StartSession(Message, frozen=True):
    """Store a new session and the call of its Start instance."""

    session: Session
    instance: str
    call: NewCall


class LookUpInstance(Message, frozen=True):
    """Before an instance runs: its session's status, and its checkpoint if it has one."""

    session: str
    instance: str


class FinishInstance(Message, frozen=True):
    """A step returned: its call's final state, its checkpoint (a conditional insert)
    and, if it won the checkpoint, what it sends on; all in the request's transaction."""

    session: str
    instance: str
    update: CallUpdate
    calls: list[NextInstance] = []
    fan_ins: list[FanInSlot] = []


class FinishInstances(Message, frozen=True):
    """The steps a worker saw return in one loop iteration (``DbClient.finish_instance``
    coalesces them), each done as ``FinishInstance`` says."""

    steps: list[FinishInstance]


class GetSession(Message, frozen=True):
    session: str


class ListSessions(Message, frozen=True):
    """An app's sessions, newest first; ``before`` (a creation time) pages back."""

    app: str
    before: float | None = None
    limit: int = 100


class CancelSession(Message, frozen=True):
    """End a running session CANCELLED: its instances not started yet do not run."""

    session: str


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


class ExecutionList(Message, frozen=True):
    executions: list[Execution]


class CallReply(Message, frozen=True):
    call: Call


class CallLogs(Message, frozen=True):
    call_num: int
    logs: str


class CallList(Message, frozen=True):
    calls: list[Call]


class SessionStarted(Message, frozen=True):
    call: Call


class InstanceState(Message, frozen=True):
    status: str  # the session's
    checkpoint: bytes | None = None  # the instance's one result, if it has one
    sent: list[Call] = []  # what the checkpoint sent on that is still PENDING


class InstanceFinished(Message, frozen=True):
    won: bool  # this run's output is the instance's result (False: another run's is)
    call: Call | None  # the call as stored; None: as the update sent it
    sent: list[Call]  # the calls it sent on that are PENDING: for the api to place
    session: Session | None  # None: no such session (``error`` says so)
    error: str | None = None


class InstancesFinished(Message, frozen=True):
    steps: list[InstanceFinished]  # in the order of the request's


class SessionReply(Message, frozen=True):
    session: Session
    instances: list[SessionInstance]


class SessionList(Message, frozen=True):
    sessions: list[Session]


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
    ListExecutions,
    StartSession,
    LookUpInstance,
    FinishInstances,
    GetSession,
    ListSessions,
    CancelSession,
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
    ExecutionList,
    SessionStarted,
    InstanceState,
    InstancesFinished,
    SessionReply,
    SessionList,
)
