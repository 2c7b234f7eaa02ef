"""HTTP handlers of events, triggers and durable executions (services/triggers/)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.common.errors import BadRequest
from services.triggers.coordinators import Execution, ExecutionIn, NewExecution
from services.triggers.events import Event, EventIn
from services.triggers.triggers import Trigger, TriggerIn

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


def event_view(e: Event) -> EventView:
    return EventView(e.specversion, e.id, e.source, e.type, e.subject, iso(e.time), e.data, e.seq)


def trigger_view(t: Trigger) -> dict[str, Any]:
    view = msgspec.to_builtins(t)
    view["createdAt"], view["updatedAt"] = iso(t.created_at), iso(t.updated_at)
    return view


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
        return json_response({"items": [event_view(e) for e in stored]}, 201)
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
    return json_response({"items": [event_view(e) for e in events], "next": next_url})


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
    return json_response({"items": [trigger_view(t) for t in triggers], "next": next_url})


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
        {
            "id": x.id,
            "name": x.name,
            "function": x.function,
            "status": x.status,
            "runs": x.runs,
            "callNum": x.call_num,
            "error": x.error,
            "createdAt": iso(x.created_at),
            "finishedAt": iso(x.finished_at),
        }
        for x in executions
    ]
    last = executions[-1].created_at if executions else 0.0
    return json_response({"items": items, "next": next_page(request, items, limit, "before", last)})


async def execution_view(app: web.Application, x: Execution) -> dict[str, Any]:
    """An execution with each step's calls (number, status, times) and its runs."""
    nums = [n for step in x.steps for n in step.call_nums] + list(x.run_calls)
    calls = {c.call_num: c for c in await app[DB].get_calls(nums)} if nums else {}

    def brief(num: int) -> dict[str, Any]:
        c = calls.get(num)
        if c is None:
            return {"callNum": num, "status": "PENDING"}
        return {
            "callNum": num,
            "status": c.status,
            "attempts": c.attempts,
            "createdAt": iso(c.created_at),
            "startedAt": iso(c.started_at),
            "finishedAt": iso(c.finished_at),
            "error": c.error,
        }

    steps = []
    for step in x.steps:
        step_calls = [brief(n) for n in step.call_nums]
        statuses = {c["status"] for c in step_calls}
        status = (
            "ERROR"
            if statuses & {"ERROR", "TIMEOUT"}
            else "DONE"
            if statuses <= {"DONE"}
            else "RUNNING"
        )
        steps.append(
            {
                "seq": step.seq,
                "kind": step.kind,
                "identity": step.identity,
                "function": step.function,
                "run": step.run,
                "status": status,
                "createdAt": iso(step.created_at),
                "calls": step_calls,
            }
        )
    return {
        "id": x.id,
        "name": x.name,
        "function": x.function,
        "stepFunction": x.step_function,
        "status": x.status,
        "runs": x.runs,
        "callNum": x.call_num,
        "runCalls": [brief(n) for n in x.run_calls],
        "result": None if x.result is None else msgspec.Raw(x.result),
        "error": x.error,
        "steps": steps,
        "createdAt": iso(x.created_at),
        "updatedAt": iso(x.updated_at),
        "finishedAt": iso(x.finished_at),
    }
