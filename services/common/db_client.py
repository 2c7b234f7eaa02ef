"""The typed client of the db service.

``create_call`` and ``update_call`` coalesce: every call made in the same event-loop
iteration goes out as one ``CreateCalls`` / ``UpdateCalls`` message, and each caller gets
its own item of the reply. Under load this is what lets the db commit thousands of calls
per transaction while each caller still writes the plain one-call code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
import zmq

from .curve import ClusterKeys
from .db_protocol import (
    DB_PROTOCOL,
    CallList,
    CallLogs,
    CallNumsReserved,
    CallReply,
    CallsCreated,
    CallsUpdated,
    CancelSession,
    CreateCalls,
    Deleted,
    DeleteFunction,
    DeleteRuntime,
    DeleteTrigger,
    EventList,
    EventsPublished,
    ExecutionList,
    ExecutionReply,
    FindCalls,
    FinishInstance,
    FinishInstances,
    FunctionList,
    FunctionReply,
    GetCall,
    GetCallLogs,
    GetCalls,
    GetExecution,
    GetFunction,
    GetRuntime,
    GetSession,
    GetTrigger,
    InstanceFinished,
    InstancesFinished,
    InstanceState,
    ListCalls,
    ListEvents,
    ListExecutions,
    ListFunctions,
    ListRuntimes,
    ListSessions,
    ListTriggers,
    LookUpInstance,
    Ping,
    Pong,
    PublishEvents,
    PutFunction,
    PutRuntime,
    PutTrigger,
    ReserveCallNums,
    RuntimeList,
    RuntimeReply,
    SessionList,
    SessionReply,
    SessionStarted,
    StartExecution,
    StartSession,
    TriggerList,
    TriggerReply,
    UpdateCalls,
)
from .errors import FumError, Unavailable
from .models import Call, CallUpdate, Function, NewCall, Runtime, Session
from .protocol import Message
from .rpc import Client

if TYPE_CHECKING:
    from services.triggers.coordinators import Execution, NewExecution
    from services.triggers.events import Event, EventIn
    from services.triggers.triggers import Trigger, TriggerIn

log = structlog.get_logger()

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=Message)

# Items per coalesced message: bounds one message's size, not how many may wait.
MAX_COALESCED = 1000


class _Coalescer(Generic[T, R]):
    """Queues items submitted in one loop iteration and sends them as one request.

    With ``in_flight``, at most that many requests are out at once: what comes while they
    are goes in the next one, sent when one is answered. Under load the batches grow by
    themselves (fewer db transactions), and a lone item still goes at once."""

    def __init__(
        self,
        name: str,
        send: Callable[[list[T]], Awaitable[list[R]]],
        in_flight: int | None = None,
    ) -> None:
        self._name = name
        self._send = send
        self._in_flight = in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    async def submit(self, item: T) -> R:
        if self.closed:
            raise Unavailable(f"db client closed: cannot {self._name}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight is not None and len(self._tasks) >= self._in_flight:
            return  # sent when one of those is answered (_sent)
        pending, self._pending = self._pending, []
        if self.closed:
            _fail(pending, Unavailable(f"db client closed: cannot {self._name}"))
            return
        loop = asyncio.get_running_loop()
        for start in range(0, len(pending), MAX_COALESCED):
            task = loop.create_task(self._run(pending[start : start + MAX_COALESCED]))
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
            if len(results) != len(batch):
                raise FumError(f"{self._name}: sent {len(batch)} items, got {len(results)} back")
        except Exception as exc:
            _fail(batch, exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        """Take no more items and fail those never sent."""
        self.closed = True
        pending, self._pending = self._pending, []
        _fail(pending, Unavailable(f"db client closed: cannot {self._name}"))

    async def wait_sent(self) -> None:
        """Wait until every batch sent has its answer (or its failure) delivered."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class DbClient:
    """Typed, awaitable access to the db over one DEALER; many requests in flight."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        keys: ClusterKeys,
        timeout: float = 10.0,
        on_placed: Callable[[list[Call]], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Gets the calls the db made PENDING for triggers' actions, to be placed.
        self._on_placed = on_placed
        self._rpc = Client(ctx, endpoint, DB_PROTOCOL, keys=keys, timeout=timeout)
        self._creates = _Coalescer[NewCall, Call]("create calls", self.create_calls)
        # Results are written after their client was answered (docs/SCHEDULING.md): their
        # batches may wait for the one in flight, and grow under load.
        self._updates = _Coalescer[CallUpdate, bool]("update calls", self.update_calls, in_flight=1)
        # Steps that return together go in one message (services/workflows/checkpoint.py).
        self._finishes = _Coalescer[FinishInstance, InstanceFinished](
            "finish instances", self.finish_instances
        )
        self.requests_sent = 0
        self._closed = False

    async def close(self) -> None:
        """Fail every request not answered yet with ``Unavailable`` and close the socket."""
        self._closed = True
        self._creates.close()
        self._updates.close()
        self._finishes.close()
        await self._rpc.close()
        await self._creates.wait_sent()
        await self._updates.wait_sent()
        await self._finishes.wait_sent()

    async def _request(
        self, message: Message, reply_type: type[M], deadline: float | None = None
    ) -> M:
        if self._closed:
            raise Unavailable(f"db client of {self.endpoint} closed")
        self.requests_sent += 1
        return await self._rpc.request(message, reply_type, deadline)

    async def ping(self, deadline: float | None = None) -> float:
        """When the db process started (epoch seconds); ``Unavailable`` if no answer in time.

        ``deadline`` (seconds) overrides the client's timeout for this one request.
        """
        return (await self._request(Ping(), Pong, deadline)).started_at

    # ---- runtimes

    async def put_runtime(self, runtime: Runtime) -> tuple[Runtime, bool]:
        """Store a runtime (insert or replace); the stored one, and whether it is new."""
        reply = await self._request(PutRuntime(runtime=runtime), RuntimeReply)
        return reply.runtime, reply.created

    async def get_runtime(self, name: str) -> Runtime:
        return (await self._request(GetRuntime(name=name), RuntimeReply)).runtime

    async def list_runtimes(self) -> list[Runtime]:
        return (await self._request(ListRuntimes(), RuntimeList)).runtimes

    async def delete_runtime(self, name: str) -> None:
        """Delete a runtime; ``Conflict`` while functions use it, ``NotFound`` if unknown."""
        await self._request(DeleteRuntime(name=name), Deleted)

    # ---- functions

    async def put_function(self, function: Function) -> tuple[Function, bool]:
        """Store a function (insert or replace); the stored one, and whether it is new."""
        reply = await self._request(PutFunction(function=function), FunctionReply)
        return reply.function, reply.created

    async def get_function(self, name: str) -> Function:
        return (await self._request(GetFunction(name=name), FunctionReply)).function

    async def list_functions(self) -> list[Function]:
        return (await self._request(ListFunctions(), FunctionList)).functions

    async def delete_function(self, name: str) -> None:
        await self._request(DeleteFunction(name=name), Deleted)

    # ---- calls

    async def create_call(self, new: NewCall) -> Call:
        """Create one call, in one message with every other created in this loop iteration."""
        return await self._creates.submit(new)

    async def update_call(self, update: CallUpdate) -> bool:
        """Apply one update (coalesced like ``create_call``); whether it changed the call."""
        return await self._updates.submit(update)

    async def create_calls(self, new_calls: list[NewCall]) -> list[Call]:
        """Create calls in one message; a uuid already known returns its existing call."""
        return (await self._request(CreateCalls(calls=new_calls), CallsCreated)).calls

    async def reserve_call_nums(self, count: int) -> int:
        """The first of ``count`` call numbers set aside for this client."""
        return (await self._request(ReserveCallNums(count=count), CallNumsReserved)).first

    async def update_calls(self, updates: list[CallUpdate]) -> list[bool]:
        reply = await self._request(UpdateCalls(updates=updates), CallsUpdated)
        self._placed(reply.placed)
        return reply.applied

    def _placed(self, calls: list[Call]) -> None:
        if calls and self._on_placed is not None:
            self._on_placed(calls)

    async def get_call(self, call_num: int) -> Call:
        return (await self._request(GetCall(call_num=call_num), CallReply)).call

    async def get_calls(self, call_nums: list[int]) -> list[Call]:
        return (await self._request(GetCalls(call_nums=call_nums), CallList)).calls

    async def find_calls(self, uuids: list[str]) -> list[Call]:
        """The calls of these uuids that exist, in call-number order."""
        return (await self._request(FindCalls(uuids=uuids), CallList)).calls

    async def get_call_logs(self, call_num: int) -> str:
        return (await self._request(GetCallLogs(call_num=call_num), CallLogs)).logs

    async def list_calls(
        self,
        *,
        func_name: str | None = None,
        status: str | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
        oldest_first: bool = False,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Call]:
        """Calls newest first (or ``oldest_first``); ``before`` and ``after`` bound the call
        number, ``since`` and ``until`` the time they were made."""
        request = ListCalls(
            func_name=func_name,
            status=status,
            before=before,
            after=after,
            limit=limit,
            oldest_first=oldest_first,
            since=since,
            until=until,
        )
        return (await self._request(request, CallList)).calls

    # ---- events, triggers, executions

    async def publish_events(self, events: list[EventIn]) -> list[Event]:
        """Store events (durable when this returns) and run them through their triggers."""
        reply = await self._request(PublishEvents(events=events), EventsPublished)
        self._placed(reply.placed)
        return reply.events

    async def list_events(
        self,
        *,
        subject: str | None = None,
        type: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[Event]:
        request = ListEvents(subject=subject, type=type, before=before, limit=limit)
        return (await self._request(request, EventList)).events

    async def put_trigger(self, trigger_id: str, trigger: TriggerIn) -> tuple[Trigger, bool]:
        reply = await self._request(PutTrigger(id=trigger_id, trigger=trigger), TriggerReply)
        return reply.trigger, reply.created

    async def get_trigger(self, trigger_id: str) -> Trigger:
        return (await self._request(GetTrigger(id=trigger_id), TriggerReply)).trigger

    async def list_triggers(
        self,
        *,
        active: bool | None = None,
        subject: str | None = None,
        execution: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Trigger]:
        request = ListTriggers(
            active=active, subject=subject, execution=execution, after=after, limit=limit
        )
        return (await self._request(request, TriggerList)).triggers

    async def delete_trigger(self, trigger_id: str) -> None:
        await self._request(DeleteTrigger(id=trigger_id), Deleted)

    async def start_execution(
        self, execution: NewExecution, caller: str | None = None
    ) -> tuple[Execution, bool]:
        reply = await self._request(
            StartExecution(execution=execution, caller=caller), ExecutionReply
        )
        self._placed(reply.placed)
        return reply.execution, reply.created

    async def get_execution(self, execution_id: str) -> Execution:
        return (await self._request(GetExecution(id=execution_id), ExecutionReply)).execution

    async def list_executions(self, before: float | None, limit: int) -> list[Execution]:
        request = ListExecutions(before=before, limit=limit)
        return (await self._request(request, ExecutionList)).executions

    # ---- workflow sessions

    async def start_session(self, session: Session, instance: str, call: NewCall) -> Call:
        """Store a session and its Start instance's call; the call."""
        request = StartSession(session=session, instance=instance, call=call)
        return (await self._request(request, SessionStarted)).call

    async def look_up_instance(self, session: str, instance: str) -> InstanceState:
        request = LookUpInstance(session=session, instance=instance)
        return await self._request(request, InstanceState)

    async def finish_instance(self, request: FinishInstance) -> InstanceFinished:
        """One step's end, in one message with every other sent in this loop iteration."""
        return await self._finishes.submit(request)

    async def finish_instances(self, requests: list[FinishInstance]) -> list[InstanceFinished]:
        reply = await self._request(FinishInstances(steps=requests), InstancesFinished)
        return reply.steps

    async def get_session(self, session: str) -> SessionReply:
        return await self._request(GetSession(session=session), SessionReply)

    async def list_sessions(
        self, app: str, before: float | None = None, limit: int = 100
    ) -> list[Session]:
        request = ListSessions(app=app, before=before, limit=limit)
        return (await self._request(request, SessionList)).sessions

    async def cancel_session(self, session: str) -> SessionReply:
        return await self._request(CancelSession(session=session), SessionReply)
