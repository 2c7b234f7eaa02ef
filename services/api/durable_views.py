"""HTTP handlers of events, triggers and durable executions (services/triggers/)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.common.errors import BadRequest
from services.triggers.coordinators import Execution, ExecutionIn, NewExecution
from services.triggers.events import Event, EventIn
from services.triggers.triggers import Action, Activation, Condition, Trigger, TriggerIn

from .security import CALLER
from .views import (
    CATALOG,
    DB,
    iso,
    json_response,
    next_page,
    query_bool,
    query_float,
    query_int,
    query_limit,
    read_json,
)

MAX_EVENTS = 1000  # events in one publish

_json = msgspec.json.Encoder()


class EventView(msgspec.Struct):
    """An event as CloudEvents 1.0 (JSON format) has it, with its place in the stream."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: str | None
    data: Any
    seq: int


class EventPage(msgspec.Struct):
    items: list[EventView]
    next: str | None


class EventsPublished(msgspec.Struct):
    items: list[EventView]


def event_view(e: Event) -> EventView:
    return EventView(e.specversion, e.id, e.source, e.type, e.subject, iso(e.time), e.data, e.seq)


class TriggerView(msgspec.Struct, kw_only=True, rename="camel"):
    """A trigger as stored: ``active`` is false once a transient one fired or it
    terminated; ``fired`` counts its actions; ``events`` the ids it joins so far."""

    id: str
    activation: list[Activation]
    condition: Condition
    action: Action
    context: dict[str, Any]
    transient: bool
    active: bool
    fired: int
    events: list[str]
    execution: str | None
    created_at: str | None
    updated_at: str | None


class TriggerPage(msgspec.Struct):
    items: list[TriggerView]
    next: str | None


def trigger_view(t: Trigger) -> TriggerView:
    return TriggerView(
        id=t.id,
        activation=t.activation,
        condition=t.condition,
        action=t.action,
        context=t.context,
        transient=t.transient,
        active=t.active,
        fired=t.fired,
        events=t.events,
        execution=t.execution,
        created_at=iso(t.created_at),
        updated_at=iso(t.updated_at),
    )


class CallBrief(msgspec.Struct, kw_only=True, rename="camel"):
    """A call of an execution; only its number and PENDING while the db has none yet."""

    call_num: int
    status: str
    attempts: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None


class ExecutionStep(msgspec.Struct, kw_only=True, rename="camel"):
    """A step of a coordinator's history: its calls, and a status of them all."""

    seq: int
    kind: str
    identity: str
    function: str
    run: int
    status: str
    created_at: str | None
    calls: list[CallBrief]


class ExecutionView(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    name: str
    function: str
    step_function: str | None
    status: str  # RUNNING, WAITING, DONE, ERROR
    runs: int
    call_num: int | None  # the latest run's call
    run_calls: list[CallBrief]
    result: msgspec.Raw | None
    error: str | None
    steps: list[ExecutionStep]
    created_at: str | None
    updated_at: str | None
    finished_at: str | None


class ExecutionSummary(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    name: str
    function: str
    status: str
    runs: int
    call_num: int | None
    error: str | None
    created_at: str | None
    finished_at: str | None


class ExecutionPage(msgspec.Struct):
    items: list[ExecutionSummary]
    next: str | None


def _next(request: web.Request, key: str, value: object) -> str:
    query = {k: v for k, v in request.query.items() if k != key}
    query[key] = str(value)
    return str(request.rel_url.with_query(query))


# ---- events


async def publish_events(request: web.Request) -> web.Response:
    """One event or a list: stored (and run through their triggers) before the answer."""
    body = await read_json(request, EventIn | list[EventIn])
    events = body if isinstance(body, list) else [body]
    if not 1 <= len(events) <= MAX_EVENTS:
        raise BadRequest(f"send between 1 and {MAX_EVENTS} events")
    stored = await request.app[DB].publish_events(events)
    if isinstance(body, list):
        return json_response(EventsPublished([event_view(e) for e in stored]), 201)
    return json_response(event_view(stored[0]), 201)


async def list_events(request: web.Request) -> web.Response:
    limit = query_limit(request)
    events = await request.app[DB].list_events(
        subject=request.query.get("subject"),
        type=request.query.get("type"),
        before=query_int(request, "before"),
        limit=limit,
    )
    next_url = _next(request, "before", events[-1].seq) if len(events) == limit else None
    return json_response(EventPage([event_view(e) for e in events], next_url))


# ---- triggers


async def put_trigger(request: web.Request) -> web.Response:
    body = await read_json(request, TriggerIn)
    trigger, created = await request.app[DB].put_trigger(request.match_info["id"], body)
    return json_response(trigger_view(trigger), 201 if created else 200)


async def get_trigger(request: web.Request) -> web.Response:
    return json_response(trigger_view(await request.app[DB].get_trigger(request.match_info["id"])))


async def delete_trigger(request: web.Request) -> web.Response:
    await request.app[DB].delete_trigger(request.match_info["id"])
    return web.Response(status=204)


async def list_triggers(request: web.Request) -> web.Response:
    limit = query_limit(request)
    active = query_bool(request, "active", True) if "active" in request.query else None
    triggers = await request.app[DB].list_triggers(
        active=active,
        subject=request.query.get("subject"),
        execution=request.query.get("execution"),
        after=request.query.get("after"),
        limit=limit,
    )
    next_url = _next(request, "after", triggers[-1].id) if len(triggers) == limit else None
    return json_response(TriggerPage([trigger_view(t) for t in triggers], next_url))


# ---- executions


async def start_execution(request: web.Request) -> web.Response:
    """Start a durable coordinator (or find the execution of that id, started already)."""
    body: ExecutionIn = await read_json(request, ExecutionIn)
    catalog = request.app[CATALOG]
    catalog.function(body.function)  # 404 for an unknown one, before the db is asked
    if body.step_function is not None:
        catalog.function(body.step_function)
    db = request.app[DB]
    execution, created = await db.start_execution(NewExecution.of(body), request.get(CALLER))
    return json_response(await execution_view(request.app, execution), 201 if created else 200)


async def get_execution(request: web.Request) -> web.Response:
    execution = await request.app[DB].get_execution(request.match_info["id"])
    return json_response(await execution_view(request.app, execution))


async def list_executions(request: web.Request) -> web.Response:
    """Executions newest first, a page at a time (``before``: the ``createdAt`` seconds
    of the last one of the page before), without their steps."""
    limit = query_limit(request)
    before = query_float(request, "before", None)
    executions = await request.app[DB].list_executions(before, limit)
    items = [
        ExecutionSummary(
            id=x.id,
            name=x.name,
            function=x.function,
            status=x.status,
            runs=x.runs,
            call_num=x.call_num,
            error=x.error,
            created_at=iso(x.created_at),
            finished_at=iso(x.finished_at),
        )
        for x in executions
    ]
    last = executions[-1].created_at if executions else 0.0
    return json_response(ExecutionPage(items, next_page(request, items, limit, "before", last)))


async def execution_view(app: web.Application, x: Execution) -> ExecutionView:
    """An execution with each step's calls (number, status, times) and its runs."""
    nums = [n for step in x.steps for n in step.call_nums] + list(x.run_calls)
    calls = {c.call_num: c for c in await app[DB].get_calls(nums)} if nums else {}

    def brief(num: int) -> CallBrief:
        c = calls.get(num)
        if c is None:
            return CallBrief(call_num=num, status="PENDING")
        return CallBrief(
            call_num=num,
            status=c.status,
            attempts=c.attempts,
            created_at=iso(c.created_at),
            started_at=iso(c.started_at),
            finished_at=iso(c.finished_at),
            error=c.error,
        )

    steps = []
    for step in x.steps:
        step_calls = [brief(n) for n in step.call_nums]
        statuses = {c.status for c in step_calls}
        status = (
            "ERROR"
            if statuses & {"ERROR", "TIMEOUT"}
            else "DONE"
            if statuses <= {"DONE"}
            else "RUNNING"
        )
        steps.append(
            ExecutionStep(
                seq=step.seq,
                kind=step.kind,
                identity=step.identity,
                function=step.function,
                run=step.run,
                status=status,
                created_at=iso(step.created_at),
                calls=step_calls,
            )
        )
    return ExecutionView(
        id=x.id,
        name=x.name,
        function=x.function,
        step_function=x.step_function,
        status=x.status,
        runs=x.runs,
        call_num=x.call_num,
        run_calls=[brief(n) for n in x.run_calls],
        result=None if x.result is None else msgspec.Raw(x.result),
        error=x.error,
        steps=steps,
        created_at=iso(x.created_at),
        updated_at=iso(x.updated_at),
        finished_at=iso(x.finished_at),
    )
