"""The db server: a ROUTER that answers every request, committing in groups.

Group commit: after one request arrives, every request already waiting on the socket is
read too (up to ``MAX_BATCH`` requests or ``MAX_BATCH_BYTES``); the batch runs in one
transaction, is committed, and only then are its replies sent, so a reply always reports
something durable. When a batch has more than one writing request, each runs in its own
SAVEPOINT, so one that fails leaves the rest of its batch intact; a lone writer needs none
(on failure the transaction holds nothing else and is rolled back). Consecutive
``CreateCalls`` (or ``UpdateCalls``) of a batch share one trip to the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import structlog
import zmq
import zmq.asyncio

from services.common.db_protocol import (
    DB_PROTOCOL,
    CallList,
    CallLogs,
    CallReply,
    CallsCreated,
    CallsUpdated,
    CreateCalls,
    Deleted,
    DeleteFunction,
    DeleteRuntime,
    FunctionList,
    FunctionReply,
    GetCall,
    GetCallLogs,
    GetCalls,
    GetFunction,
    GetRuntime,
    ListCalls,
    ListFunctions,
    ListRuntimes,
    Ping,
    Pong,
    PutFunction,
    PutRuntime,
    RuntimeList,
    RuntimeReply,
    UpdateCalls,
)
from services.common.errors import FumError, Unavailable, UnknownMessage
from services.common.models import check_name, now
from services.common.protocol import Error, Message, Protocol

from .store import Store, check_status

log = structlog.get_logger()

MAX_BATCH = 1024
# Bounds the work (and so the reply latency) of one batch when requests are large.
MAX_BATCH_BYTES = 2 * 1024 * 1024

# What a handler gives for each request: its reply, or the exception that failed it.
Outcome = Message | Exception
RunUnit = Callable[[list[Any]], Awaitable[list[Outcome]]]
R = TypeVar("R", bound=Message)


class Handler(NamedTuple):
    """How to run one message type: ``run`` maps requests to outcomes, in order."""

    run: RunUnit
    writes: bool  # needs the batch transaction and a savepoint
    groups: bool = False  # consecutive requests of this type go to ``run`` together


def _one(handle: Callable[[Any], Awaitable[Message]]) -> RunUnit:
    """Adapt a handler of one request to the list form; its unit is always one request."""

    async def run(requests: list[Any]) -> list[Outcome]:
        (request,) = requests
        return [await handle(request)]

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


class DbServer:
    """Reads requests from a bound ROUTER in batches and answers each exactly once."""

    def __init__(self, sock: zmq.asyncio.Socket, store: Store) -> None:
        self._sock = sock
        # The same socket without the asyncio layer, to drain and reply without a future
        # per message. Used only while no asyncio receive is pending (a plain call can eat
        # the edge of the notification fd); the asyncio wrapper re-checks EVENTS whenever
        # it starts to wait, so nothing is missed.
        self._sync_sock: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._store = store
        self.started_at = now()
        self.stopping = False
        self._recv: asyncio.Future[list[bytes]] | None = None
        self._handlers: dict[type[Message], Handler] = {
            Ping: Handler(_one(self._ping), writes=False),
            PutRuntime: Handler(_one(self._put_runtime), writes=True),
            GetRuntime: Handler(_one(self._get_runtime), writes=False),
            ListRuntimes: Handler(_one(self._list_runtimes), writes=False),
            DeleteRuntime: Handler(_one(self._delete_runtime), writes=True),
            PutFunction: Handler(_one(self._put_function), writes=True),
            GetFunction: Handler(_one(self._get_function), writes=False),
            ListFunctions: Handler(_one(self._list_functions), writes=False),
            DeleteFunction: Handler(_one(self._delete_function), writes=True),
            CreateCalls: Handler(self._create_calls, writes=True, groups=True),
            UpdateCalls: Handler(self._update_calls, writes=True, groups=True),
            GetCall: Handler(_one(self._get_call), writes=False),
            GetCalls: Handler(_one(self._get_calls), writes=False),
            GetCallLogs: Handler(_one(self._get_call_logs), writes=False),
            ListCalls: Handler(_one(self._list_calls), writes=False),
        }

    # ---- main loop

    def stop(self) -> None:
        """Drain: read nothing more, finish the batch in hand and reply, then leave ``serve``."""
        self.stopping = True
        if self._recv is not None:
            self._recv.cancel()

    async def serve(self) -> None:
        while not self.stopping:
            batch = await self._read_batch()
            if batch is None:
                break
            await self._run_batch(batch)

    async def _read_batch(self) -> list[list[bytes]] | None:
        """Wait for one request, then take every one already waiting; ``None`` when stopped."""
        self._recv = cast("asyncio.Future[list[bytes]]", self._sock.recv_multipart())
        try:
            first = await self._recv
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopping and task is not None and not task.cancelling():
                return None  # stop() cancelled the receive; nobody cancelled this task
            raise
        finally:
            self._recv = None
        batch = [first]
        size = len(first[-1])
        while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            try:
                frames = self._sync_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            batch.append(frames)
            size += len(frames[-1])
        return batch

    async def _run_batch(self, batch: list[list[bytes]]) -> None:
        started = time.perf_counter()
        requests = [self._decode(frames) for frames in batch]
        units = self._units(requests)
        writers = sum(handler.writes for handler, _ in units)
        writes = writers > 0
        try:
            if writes:
                await self._store.begin()
            for handler, unit in units:
                await self._run_unit(handler, unit, isolate=writers > 1)
            if writes:
                await self._store.commit()
        except Exception as exc:
            # Nothing of this batch is durable: no request of it may be answered as done.
            log.error("db.batch_failed", requests=len(requests), exc_info=exc)
            failed = Error(code=Unavailable.code, message=f"db: batch not committed: {exc}")
            for request in requests:
                request.reply = failed
            try:
                await self._store.rollback()
            finally:
                self._send_replies(requests)
            return
        self._send_replies(requests)
        log.debug(
            "db.batch",
            requests=len(requests),
            units=len(units),
            writes=writes,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )

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

    async def _run_unit(self, handler: Handler, unit: list[_Request], *, isolate: bool) -> None:
        """Run one unit and set its replies; ``isolate`` puts its writes in a savepoint."""
        requests = [request.message for request in unit]
        outcomes: list[Outcome]
        try:
            if handler.writes and isolate:
                async with self._store.savepoint():
                    outcomes = await handler.run(requests)
            else:
                outcomes = await handler.run(requests)
        except Exception as exc:
            if handler.writes and isolate and not self._store.in_transaction:
                raise  # SQLite gave up the whole transaction: the batch fails
            if handler.writes and not isolate:
                # The batch's only writer: its transaction holds nothing else to keep.
                await self._store.rollback()
                await self._store.begin()
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
                self._sync_sock.send_multipart(
                    [*request.routing, DB_PROTOCOL.encode(request.reply)], zmq.NOBLOCK
                )
            except zmq.ZMQError as exc:
                log.warning("db.reply_undelivered", error=str(exc))

    # ---- handlers

    async def _ping(self, _: Ping) -> Pong:
        return Pong(started_at=self.started_at)

    async def _put_runtime(self, request: PutRuntime) -> RuntimeReply:
        runtime, created = await self._store.put_runtime(request.runtime)
        return RuntimeReply(runtime=runtime, created=created)

    async def _get_runtime(self, request: GetRuntime) -> RuntimeReply:
        return RuntimeReply(runtime=await self._store.get_runtime(request.name))

    async def _list_runtimes(self, _: ListRuntimes) -> RuntimeList:
        return RuntimeList(runtimes=await self._store.list_runtimes())

    async def _delete_runtime(self, request: DeleteRuntime) -> Deleted:
        await self._store.delete_runtime(request.name)
        return Deleted(name=request.name)

    async def _put_function(self, request: PutFunction) -> FunctionReply:
        function, created = await self._store.put_function(request.function)
        return FunctionReply(function=function, created=created)

    async def _get_function(self, request: GetFunction) -> FunctionReply:
        return FunctionReply(function=await self._store.get_function(request.name))

    async def _list_functions(self, _: ListFunctions) -> FunctionList:
        return FunctionList(functions=await self._store.list_functions())

    async def _delete_function(self, request: DeleteFunction) -> Deleted:
        await self._store.delete_function(request.name)
        return Deleted(name=request.name)

    async def _create_calls(self, requests: list[CreateCalls]) -> list[Outcome]:
        """All the creates of a group in one store trip; a malformed one fails alone."""
        errors = _check_each(
            requests, lambda request: [check_name("function", c.func_name) for c in request.calls]
        )
        calls = iter(
            await self._store.create_calls(
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

    async def _update_calls(self, requests: list[UpdateCalls]) -> list[Outcome]:
        """All the updates of a group in one store trip; a malformed one fails alone."""
        errors = _check_each(
            requests, lambda request: [check_status(update.status) for update in request.updates]
        )
        applied = iter(
            await self._store.update_calls(
                [
                    update
                    for request, error in zip(requests, errors, strict=True)
                    if error is None
                    for update in request.updates
                ]
            )
        )
        return [
            CallsUpdated(applied=[next(applied) for _ in request.updates])
            if error is None
            else error
            for request, error in zip(requests, errors, strict=True)
        ]

    async def _get_call(self, request: GetCall) -> CallReply:
        return CallReply(call=await self._store.get_call(request.call_num))

    async def _get_calls(self, request: GetCalls) -> CallList:
        return CallList(calls=await self._store.get_calls(request.call_nums))

    async def _get_call_logs(self, request: GetCallLogs) -> CallLogs:
        logs = await self._store.get_call_logs(request.call_num)
        return CallLogs(call_num=request.call_num, logs=logs)

    async def _list_calls(self, request: ListCalls) -> CallList:
        return CallList(
            calls=await self._store.list_calls(
                func_name=request.func_name,
                status=request.status,
                before=request.before,
                after=request.after,
                limit=request.limit,
            )
        )
