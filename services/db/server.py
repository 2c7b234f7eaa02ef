"""The db server: a ROUTER that answers every request, committing in groups.

Group commit: requests are read as they arrive; every request that came while a batch
was running is the next batch (up to ``MAX_BATCH`` requests or ``MAX_BATCH_BYTES``); it
runs in one
transaction, is committed, and only then are its replies sent, so a reply always reports
something durable. When a batch has more than one writing request, each runs in its own
SAVEPOINT, so one that fails leaves the rest of its batch intact; a lone writer needs none
(on failure the transaction holds nothing else and is rolled back). Consecutive
``CreateCalls`` (or ``UpdateCalls``) of a batch share one call of the store.

The whole batch, from BEGIN to COMMIT or ROLLBACK, is one synchronous function given to
``Store.write``, which runs it on this thread when its commit costs no fsync and on the
store's connection thread otherwise (and so does a batch of more than ``INLINE_BYTES``):
at most one thread trip per batch, never one per statement. So the handlers are
synchronous.

Listings are taken out of their batch and run on the store's reader (``Store.read``),
beside the batches: a page of a million calls never waits behind writes, nor holds up a
``GetCall``. They read what is committed, so a listing pipelined right behind a write on
the same socket may not see it; a client that needs it waits for the write's reply.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgspec
import structlog
import zmq

from services.common.db_protocol import (
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
from services.common.errors import FumError, Unavailable, UnknownMessage
from services.common.models import check_name, now
from services.common.protocol import Error, Message, Protocol
from services.common.rpc import Channel
from services.workflows import checkpoint

from . import metrics
from .store import RollbackFailed, Store, check_status

log = structlog.get_logger()

MAX_BATCH = 1024
# Bounds the work (and so the reply latency) of one batch when requests are large.
MAX_BATCH_BYTES = 2 * 1024 * 1024
# A batch up to this size may run on the loop's thread (``Store.write``).
INLINE_BYTES = 64 * 1024

# What a handler gives for each request: its reply, or the exception that failed it.
Outcome = Message | Exception
RunUnit = Callable[[list[Any]], list[Outcome]]
R = TypeVar("R", bound=Message)


class Handler(NamedTuple):
    """How to run one message type: ``run`` maps requests to outcomes, in order."""

    run: RunUnit
    writes: bool  # needs the batch transaction and a savepoint
    groups: bool = False  # consecutive requests of this type go to ``run`` together
    store: bool = True  # uses the store, so the batch must go to its thread
    apart: bool = False  # a listing: runs on the store's reader, beside the batches


def _one(handle: Callable[[Any], Message]) -> RunUnit:
    """Adapt a handler of one request to the list form; its unit is always one request."""

    def run(requests: list[Any]) -> list[Outcome]:
        (request,) = requests
        return [handle(request)]

    return run


def _check_each(requests: list[R], check: Callable[[R], object]) -> list[FumError | None]:
    """Validate each request of a group on its own: its error, or ``None`` if it may run."""
    errors: list[FumError | None] = []
    for request in requests:
        try:
            check(request)
        except FumError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


@dataclass(slots=True)
class _Request:
    routing: list[bytes]
    message: Message | None
    reply: Message | None = None
    apart: bool = False  # answered by the reader, not with its batch


class DbServer:
    """Reads requests from a bound ROUTER in batches and answers each exactly once."""

    def __init__(
        self, sock: zmq.Socket[bytes], store: Store, keep_checkpoints: bool = False
    ) -> None:
        self._keep_checkpoints = keep_checkpoints
        # Requests are read as they come (a Channel drains the socket on each wake-up)
        # and wait here until the batch in hand is done: those are the next batch.
        self._waiting: deque[list[bytes]] = deque()
        self._arrived = asyncio.Event()
        self._channel = Channel(sock, self._on_frames, name="db")
        self._store = store
        self.started_at = now()
        self.stopping = False
        self._reads: set[asyncio.Task[None]] = set()
        self._handlers: dict[type[Message], Handler] = {
            Ping: Handler(_one(self._ping), writes=False, store=False),
            PutRuntime: Handler(_one(self._put_runtime), writes=True),
            GetRuntime: Handler(_one(self._get_runtime), writes=False),
            ListRuntimes: Handler(_one(self._list_runtimes), writes=False, apart=True),
            DeleteRuntime: Handler(_one(self._delete_runtime), writes=True),
            PutFunction: Handler(_one(self._put_function), writes=True),
            GetFunction: Handler(_one(self._get_function), writes=False),
            ListFunctions: Handler(_one(self._list_functions), writes=False, apart=True),
            DeleteFunction: Handler(_one(self._delete_function), writes=True),
            CreateCalls: Handler(self._create_calls, writes=True, groups=True),
            ReserveCallNums: Handler(_one(self._reserve_call_nums), writes=True),
            UpdateCalls: Handler(self._update_calls, writes=True, groups=True),
            GetCall: Handler(_one(self._get_call), writes=False),
            GetCalls: Handler(_one(self._get_calls), writes=False),
            FindCalls: Handler(_one(self._find_calls), writes=False),
            GetCallLogs: Handler(_one(self._get_call_logs), writes=False),
            ListCalls: Handler(_one(self._list_calls), writes=False, apart=True),
            PublishEvents: Handler(_one(self._publish_events), writes=True),
            ListEvents: Handler(_one(self._list_events), writes=False),
            PutTrigger: Handler(_one(self._put_trigger), writes=True),
            GetTrigger: Handler(_one(self._get_trigger), writes=False),
            ListTriggers: Handler(_one(self._list_triggers), writes=False),
            DeleteTrigger: Handler(_one(self._delete_trigger), writes=True),
            StartExecution: Handler(_one(self._start_execution), writes=True),
            GetExecution: Handler(_one(self._get_execution), writes=False),
            ListExecutions: Handler(_one(self._list_executions), writes=False),
            StartSession: Handler(_one(self._start_session), writes=True),
            LookUpInstance: Handler(_one(self._look_up_instance), writes=False),
            FinishInstances: Handler(self._finish_instances, writes=True, groups=True),
            GetSession: Handler(_one(self._get_session), writes=False),
            ListSessions: Handler(_one(self._list_sessions), writes=False),
            CancelSession: Handler(_one(self._cancel_session), writes=True),
        }

    # ---- main loop

    def stop(self) -> None:
        """Drain: take nothing more, finish the batch in hand and reply, then leave ``serve``."""
        self.stopping = True
        self._arrived.set()

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket, giving the last replies ``linger_ms`` to leave."""
        self._channel.close(linger_ms)

    def _on_frames(self, frames: list[bytes]) -> None:
        self._waiting.append(frames)
        self._arrived.set()

    async def serve(self) -> None:
        while True:
            await self._arrived.wait()
            if self.stopping:
                return
            self._arrived.clear()
            while self._waiting and not self.stopping:
                await self._run_batch(self._next_batch())

    async def drain(self) -> None:
        """Wait for the listings still running on the reader, and their replies."""
        await asyncio.gather(*self._reads)

    def _next_batch(self) -> list[list[bytes]]:
        """The requests waiting, oldest first, up to MAX_BATCH or MAX_BATCH_BYTES."""
        batch = [self._waiting.popleft()]
        size = len(batch[0][-1])
        while self._waiting and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            frames = self._waiting.popleft()
            batch.append(frames)
            size += len(frames[-1])
        return batch

    async def _run_batch(self, batch: list[list[bytes]]) -> None:
        started = time.perf_counter()
        requests = [self._decode(frames) for frames in batch]
        units = self._units(requests)
        apart = [unit for unit in units if unit[0].apart]
        if apart:
            units = [unit for unit in units if not unit[0].apart]
            for _, unit in apart:
                for request in unit:
                    request.apart = True
            read = asyncio.ensure_future(self._run_apart(apart))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)
            requests = [request for request in requests if not request.apart]
        writers = sum(handler.writes for handler, _ in units)
        # A large batch (a map's calls, say) runs on the store's thread all the same: the
        # listings that end on the reader's meanwhile are answered without waiting for it.
        small = sum(len(frames[-1]) for frames in batch) <= INLINE_BYTES
        try:
            if any(handler.store for handler, _ in units):
                run = self._store.write if small else self._store.run
                await run(self._run_units, units, writers)
            else:
                self._run_units(units, writers)  # pings: no need to wake the store's thread
        except Exception as exc:
            # Nothing of this batch is durable: no request of it may be answered as done.
            log.error("db.batch_failed", requests=len(requests), exc_info=exc)
            metrics.FAILED.inc()
            failed = Error(code=Unavailable.code, message=f"db: batch not committed: {exc}")
            for request in requests:
                request.reply = failed
            self._send_replies(requests)
            if isinstance(exc, RollbackFailed):
                raise  # answered; but no other batch may run on this connection
            return
        self._send_replies(requests)
        seconds = time.perf_counter() - started
        metrics.BATCH_SECONDS.labels(str(writers > 0).lower()).observe(seconds)
        metrics.BATCH_REQUESTS.observe(len(requests))
        kinds = Counter(r.message.msg_type for r in requests if r.message is not None)
        for kind, count in kinds.items():
            metrics.REQUESTS.labels(kind).inc(count)
        log.debug(
            "db.batch",
            requests=len(requests),
            units=len(units),
            writes=writers > 0,
            ms=round(seconds * 1000, 3),
        )

    async def _run_apart(self, units: list[tuple[Handler, list[_Request]]]) -> None:
        """Run listings on the store's reader and answer them."""
        try:
            await self._store.read(self._run_units, units, 0)
        except Exception as exc:
            log.error("db.read_failed", exc_info=exc)
            failed = Error(code=Unavailable.code, message=f"db: read failed: {exc}")
            for _, unit in units:
                for request in unit:
                    request.reply = request.reply or failed
        self._send_replies([request for _, unit in units for request in unit])

    def _decode(self, frames: list[bytes]) -> _Request:
        routing, payload = frames[:-1], frames[-1]
        try:
            return _Request(routing, DB_PROTOCOL.decode(payload))
        except FumError as exc:
            log.info("db.bad_request", code=exc.code, error=exc.message)
            return _Request(routing, None, Protocol.error(exc))

    def _units(self, requests: list[_Request]) -> list[tuple[Handler, list[_Request]]]:
        """Split a batch into runs for the handlers: one request each, or a group."""
        units: list[tuple[Handler, list[_Request]]] = []
        for request in requests:
            if request.message is None:
                continue
            handler = self._handlers.get(type(request.message))
            if handler is None:
                request.reply = Protocol.error(
                    UnknownMessage(f"db: {request.message.msg_type} is not a request")
                )
            elif handler.groups and units and units[-1][0] is handler:
                units[-1][1].append(request)
            else:
                units.append((handler, [request]))
        return units

    def _run_units(self, units: list[tuple[Handler, list[_Request]]], writers: int) -> None:
        """Run a batch's units in order and set their replies (through ``Store.write``,
        unless the batch does not touch the store: pings).

        With any writer, all in one transaction: committed at the end, or rolled back if
        anything raises out of a unit (or the commit fails), which fails the whole batch.
        """
        with self._store.transaction() if writers else nullcontext():
            for handler, unit in units:
                self._run_unit(handler, unit, isolate=writers > 1)

    def _run_unit(self, handler: Handler, unit: list[_Request], *, isolate: bool) -> None:
        """Run one unit and set its replies; ``isolate`` puts its writes in a savepoint."""
        requests = [request.message for request in unit]
        outcomes: list[Outcome]
        try:
            if handler.writes and isolate:
                with self._store.savepoint():
                    outcomes = handler.run(requests)
            else:
                outcomes = handler.run(requests)
        except Exception as exc:
            if handler.writes and isolate and not self._store.in_transaction:
                raise  # SQLite gave up the whole transaction: the batch fails
            if handler.writes and not isolate:
                # The batch's only writer: its transaction holds nothing else to keep.
                self._store.rollback()
                self._store.begin()
            outcomes = [exc] * len(unit)
        for request, outcome in zip(unit, outcomes, strict=True):
            if isinstance(outcome, Message):
                request.reply = outcome
                continue
            if not isinstance(outcome, FumError):
                msg_type = request.message.msg_type if request.message else "?"
                log.error("db.handler_failed", msg_type=msg_type, exc_info=outcome)
            request.reply = Protocol.error(outcome)

    def _send_replies(self, requests: list[_Request]) -> None:
        # Never wait on a peer: one that stopped reading must not stall everyone else.
        for request in requests:
            assert request.reply is not None
            try:
                payload = DB_PROTOCOL.encode(request.reply)
            except (OverflowError, TypeError, msgspec.EncodeError) as exc:
                # A value the wire cannot carry (an integer beyond 64 bits from a stored
                # JSON text, say): that request fails, the db goes on.
                log.error("db.reply_unencodable", reply=request.reply.msg_type, error=str(exc))
                payload = DB_PROTOCOL.encode(
                    Error(code="internal", message=f"db: the reply could not be sent: {exc}")
                )
            try:
                self._channel.send([*request.routing, payload], wait=False)
            except zmq.ZMQError as exc:
                log.warning("db.reply_undelivered", error=str(exc))

    # ---- handlers: synchronous, run by ``Store.write`` within the batch's transaction

    def _ping(self, _: Ping) -> Pong:
        return Pong(started_at=self.started_at)

    def _put_runtime(self, request: PutRuntime) -> RuntimeReply:
        runtime, created = self._store.put_runtime(request.runtime)
        return RuntimeReply(runtime=runtime, created=created)

    def _get_runtime(self, request: GetRuntime) -> RuntimeReply:
        return RuntimeReply(runtime=self._store.get_runtime(request.name))

    def _list_runtimes(self, _: ListRuntimes) -> RuntimeList:
        return RuntimeList(runtimes=self._store.list_runtimes())

    def _delete_runtime(self, request: DeleteRuntime) -> Deleted:
        self._store.delete_runtime(request.name)
        return Deleted(name=request.name)

    def _put_function(self, request: PutFunction) -> FunctionReply:
        function, created = self._store.put_function(request.function)
        return FunctionReply(function=function, created=created)

    def _get_function(self, request: GetFunction) -> FunctionReply:
        return FunctionReply(function=self._store.get_function(request.name))

    def _list_functions(self, _: ListFunctions) -> FunctionList:
        return FunctionList(functions=self._store.list_functions())

    def _delete_function(self, request: DeleteFunction) -> Deleted:
        self._store.delete_function(request.name)
        return Deleted(name=request.name)

    def _create_calls(self, requests: list[CreateCalls]) -> list[Outcome]:
        """All the creates of a group in one store call; a malformed one fails alone."""

        def check(request: CreateCalls) -> None:
            for new in request.calls:
                check_name("function", new.func_name)
                self._store.check_reserved(new.call_num)

        errors = _check_each(requests, check)
        calls = iter(
            self._store.create_calls(
                [
                    new
                    for request, error in zip(requests, errors, strict=True)
                    if error is None
                    for new in request.calls
                ]
            )
        )
        return [
            CallsCreated(calls=[next(calls) for _ in request.calls]) if error is None else error
            for request, error in zip(requests, errors, strict=True)
        ]

    def _reserve_call_nums(self, request: ReserveCallNums) -> CallNumsReserved:
        return CallNumsReserved(first=self._store.reserve_call_nums(request.count))

    def _update_calls(self, requests: list[UpdateCalls]) -> list[Outcome]:
        """All the updates of a group in one store call; a malformed one fails alone."""
        errors = _check_each(
            requests, lambda request: [check_status(update.status) for update in request.updates]
        )
        self._store.take_placed()
        applied = iter(
            self._store.update_calls(
                [
                    update
                    for request, error in zip(requests, errors, strict=True)
                    if error is None
                    for update in request.updates
                ]
            )
        )
        # Every writer of the group may hand them to the api: it places each call once.
        placed = self._store.take_placed()
        return [
            CallsUpdated(applied=[next(applied) for _ in request.updates], placed=placed)
            if error is None
            else error
            for request, error in zip(requests, errors, strict=True)
        ]

    def _get_call(self, request: GetCall) -> CallReply:
        return CallReply(call=self._store.get_call(request.call_num))

    def _get_calls(self, request: GetCalls) -> CallList:
        return CallList(calls=self._store.get_calls(request.call_nums))

    def _find_calls(self, request: FindCalls) -> CallList:
        return CallList(calls=self._store.find_calls(request.uuids))

    def _get_call_logs(self, request: GetCallLogs) -> CallLogs:
        logs = self._store.get_call_logs(request.call_num)
        return CallLogs(call_num=request.call_num, logs=logs)

    def _list_calls(self, request: ListCalls) -> CallList:
        return CallList(calls=self._store.list_calls(request))

    # ---- events, triggers, executions (services/triggers)

    def _publish_events(self, request: PublishEvents) -> EventsPublished:
        self._store.take_placed()
        events = self._store.triggers.publish(request.events)
        return EventsPublished(events=events, placed=self._store.take_placed())

    def _list_events(self, request: ListEvents) -> EventList:
        return EventList(
            events=self._store.triggers.list_events(
                subject=request.subject,
                type=request.type,
                before=request.before,
                limit=request.limit,
            )
        )

    def _put_trigger(self, request: PutTrigger) -> TriggerReply:
        trigger, created = self._store.triggers.put_trigger(request.id, request.trigger)
        return TriggerReply(trigger=trigger, created=created)

    def _get_trigger(self, request: GetTrigger) -> TriggerReply:
        return TriggerReply(trigger=self._store.triggers.get_trigger(request.id))

    def _list_triggers(self, request: ListTriggers) -> TriggerList:
        return TriggerList(
            triggers=self._store.triggers.list_triggers(
                active=request.active,
                subject=request.subject,
                execution=request.execution,
                after=request.after,
                limit=request.limit,
            )
        )

    def _delete_trigger(self, request: DeleteTrigger) -> Deleted:
        self._store.triggers.delete_trigger(request.id)
        return Deleted(name=request.id)

    def _start_execution(self, request: StartExecution) -> ExecutionReply:
        self._store.take_placed()
        execution, created = self._store.coordinators.start(request.execution, request.caller)
        return ExecutionReply(
            execution=execution, created=created, placed=self._store.take_placed()
        )

    def _get_execution(self, request: GetExecution) -> ExecutionReply:
        return ExecutionReply(execution=self._store.coordinators.get(request.id))

    def _list_executions(self, request: ListExecutions) -> ExecutionList:
        return ExecutionList(
            executions=self._store.coordinators.list(request.before, request.limit)
        )

    # ---- workflow sessions (services/workflows/checkpoint.py)

    def _start_session(self, request: StartSession) -> SessionStarted:
        call = checkpoint.start_session(
            self._store, request.session, request.instance, request.call
        )
        return SessionStarted(call=call)

    def _look_up_instance(self, request: LookUpInstance) -> InstanceState:
        return checkpoint.look_up(self._store, request.session, request.instance)

    def _finish_instances(self, requests: list[FinishInstances]) -> list[Outcome]:
        """The steps of a group's messages (the workers' that came together) done together,
        in order, each message answered with its own; a malformed one fails alone."""
        errors = _check_each(
            requests, lambda request: [check_status(step.update.status) for step in request.steps]
        )
        steps = iter(
            checkpoint.finish_instances(
                self._store,
                [
                    step
                    for request, error in zip(requests, errors, strict=True)
                    if error is None
                    for step in request.steps
                ],
                self._keep_checkpoints,
            )
        )
        return [
            InstancesFinished(steps=[next(steps) for _ in request.steps])
            if error is None
            else error
            for request, error in zip(requests, errors, strict=True)
        ]

    def _get_session(self, request: GetSession) -> SessionReply:
        return checkpoint.get_session(self._store, request.session)

    def _list_sessions(self, request: ListSessions) -> SessionList:
        sessions = checkpoint.list_sessions(self._store, request.app, request.before, request.limit)
        return SessionList(sessions=sessions)

    def _cancel_session(self, request: CancelSession) -> SessionReply:
        return checkpoint.cancel_session(self._store, request.session, self._keep_checkpoints)
