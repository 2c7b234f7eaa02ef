"""Every HTTP route in one table; the OpenAPI document is generated from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.common.models import Limits
from services.triggers.coordinators import ExecutionIn
from services.triggers.events import EventIn
from services.triggers.triggers import TriggerIn
from services.workflows import views as workflows

from . import durable_views, keeper_views, views

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    # The request body: a type (JSON decoded as that type), or "params" (any JSON),
    # "multipart" (a package upload), "archive" (a tar.gz or zip), "binary" (a file).
    body: Any = None
    responses: tuple[int, ...] = (200,)
    query: tuple[str, ...] = ()
    tag: str = "v1"
    # What a 2xx answer (but a 204) holds: the type the view encodes as JSON, a tuple of
    # such types (one of them), or a tuple of media types (not JSON).
    reply: Any = None


async def openapi_view(request: web.Request) -> web.Response:
    from .openapi import openapi_document

    return views.json_response(openapi_document(ROUTES))


ROUTES: tuple[Route, ...] = (
    # the original design's routes, kept as they were
    Route(
        "POST",
        "/registerRuntime",
        views.legacy_register_runtime,
        "Register (or replace) a runtime; its name is its image",
        views.RuntimeIn,
        (200, 400),
        tag="original",
        reply=views.RuntimeView,
    ),
    Route(
        "POST",
        "/registerFunction/{runtime}/{funcName}",
        views.legacy_register_function,
        "Upload a function package (multipart field 'module')",
        "multipart",
        (200, 400, 404, 413),
        tag="original",
        reply=views.FunctionView,
    ),
    Route(
        "POST",
        "/invokeFunction",
        views.legacy_invoke,
        "Invoke a function without waiting: answers its callNum",
        views.LegacyInvoke,
        (200, 400, 404, 409, 422, 429),
        tag="original",
        reply=views.LegacyInvoked,
    ),
    Route(
        "GET", "/runtimes", views.legacy_runtimes, "Runtime names", tag="original", reply=list[str]
    ),
    Route(
        "GET",
        "/functions",
        views.legacy_functions,
        "Function names",
        tag="original",
        reply=list[str],
    ),
    Route(
        "GET",
        "/calls",
        views.legacy_calls,
        "Every call, keyed c<callNum>",
        tag="original",
        reply=dict[str, views.LegacyCall],
    ),
    Route(
        "GET",
        "/call/{callNum}",
        views.legacy_call_get,
        "One call",
        responses=(200, 404),
        tag="original",
        reply=views.LegacyCall,
    ),
    # v1
    Route(
        "GET",
        "/healthz",
        views.healthz,
        "Liveness: the api and its db answer",
        responses=(200, 503),
        reply=views.Health,
    ),
    Route("GET", "/v1/openapi.json", openapi_view, "This document", reply=dict[str, Any]),
    Route("GET", "/ui", views.ui_page, "The dashboard", tag="operations", reply=("text/html",)),
    Route(
        "GET",
        "/ui/{file}",
        views.ui_asset,
        "A file of the dashboard",
        responses=(200, 404),
        tag="operations",
        reply=("text/html", "text/javascript", "text/css"),
    ),
    Route(
        "GET",
        "/metrics",
        views.metrics_view,
        "The api's metrics, Prometheus text format",
        tag="operations",
        reply=("text/plain",),
    ),
    Route(
        "GET",
        "/v1/runtimes",
        views.list_runtimes,
        "List runtimes in name order, paginated",
        responses=(200, 400),
        query=("limit", "after"),
        reply=views.RuntimePage,
    ),
    Route(
        "POST",
        "/v1/runtimes",
        views.create_runtime,
        "Create a runtime",
        views.RuntimeIn,
        (201, 400, 409),
        reply=views.RuntimeView,
    ),
    Route(
        "GET",
        "/v1/runtimes/{name}",
        views.get_runtime,
        "Get a runtime",
        responses=(200, 404),
        reply=views.RuntimeView,
    ),
    Route(
        "PUT",
        "/v1/runtimes/{name}",
        views.put_runtime,
        "Create or replace a runtime",
        views.RuntimeIn,
        (200, 201, 400),
        reply=views.RuntimeView,
    ),
    Route(
        "DELETE",
        "/v1/runtimes/{name}",
        views.delete_runtime,
        "Delete a runtime no function uses",
        responses=(204, 404, 409),
    ),
    Route(
        "GET",
        "/v1/functions",
        views.list_functions,
        "List functions in name order, paginated",
        responses=(200, 400),
        query=("limit", "after"),
        reply=views.FunctionPage,
    ),
    Route(
        "GET",
        "/v1/functions/{name}",
        views.get_function,
        "Get a function and its build (status building, ready or failed, and its log); "
        "wait=S answers once the build is over, or after S seconds (at most 60)",
        responses=(200, 400, 404),
        query=("wait",),
        reply=views.FunctionView,
    ),
    Route(
        "PUT",
        "/v1/functions/{name}",
        views.put_function,
        "Create or replace a function: multipart 'module' (tar.gz or zip), 'runtime', "
        "optional limits (timeout, memory, cpus, pids, concurrency, queue, minWarm, "
        "maxContainers)",
        "multipart",
        (200, 201, 400, 404, 413),
        reply=views.FunctionView,
    ),
    Route(
        "PATCH",
        "/v1/functions/{name}",
        views.patch_function,
        "Update a function's limits",
        Limits,
        (200, 400, 404),
        reply=views.FunctionView,
    ),
    Route(
        "DELETE",
        "/v1/functions/{name}",
        views.delete_function,
        "Delete a function",
        responses=(204, 404),
    ),
    Route(
        "POST",
        "/v1/functions/{name}/invoke",
        views.invoke_function,
        "Invoke: the body is the params (JSON). blocking=true (default) waits up to "
        "'timeout' seconds and answers 200 with the finished call, else 202",
        "params",
        (200, 202, 400, 404, 409, 422, 429, 503),
        ("blocking", "timeout"),
        reply=views.CallView,
    ),
    Route(
        "GET",
        "/v1/calls",
        views.list_calls,
        "List calls, newest first, paginated; 'since'/'until': made in that window (ISO "
        "8601 or seconds since the epoch, 'until' excluded)",
        responses=(200, 400),
        query=("function", "status", "limit", "before", "after", "since", "until"),
        reply=views.CallPage,
    ),
    Route(
        "POST",
        "/v1/calls",
        views.create_calls,
        "Create many calls at once without waiting (up to 10,000): answers their callNums",
        views.BatchIn,
        (202, 400, 404, 409, 422, 429),
        reply=views.CallNums,
    ),
    Route(
        "POST",
        "/v1/calls/wait",
        views.wait_calls,
        "Wait up to 'timeout' seconds for any or all of the calls to finish; answers the "
        "finished ones and the numbers still pending",
        views.WaitIn,
        (200, 400, 404, 503),
        reply=views.Waited,
    ),
    Route(
        "GET",
        "/v1/calls/{callNum}",
        views.get_call,
        "Get a call",
        responses=(200, 404),
        reply=views.CallView,
    ),
    Route(
        "GET",
        "/v1/calls/{callNum}/logs",
        views.get_call_logs,
        "The output the function printed during the call",
        responses=(200, 404),
        reply=views.CallLogs,
    ),
    Route(
        "POST",
        "/v1/events",
        durable_views.publish_events,
        "Publish one CloudEvent or a list: stored, and run through the triggers they "
        "activate, before the answer",
        EventIn | list[EventIn],
        (201, 400),
        reply=(durable_views.EventView, durable_views.EventsPublished),
    ),
    Route(
        "GET",
        "/v1/events",
        durable_views.list_events,
        "List stored events (call ends and published ones), newest first, paginated",
        responses=(200, 400),
        query=("subject", "type", "limit", "before"),
        reply=durable_views.EventPage,
    ),
    Route(
        "GET",
        "/v1/triggers",
        durable_views.list_triggers,
        "List triggers by id, paginated; 'subject': those its events activate",
        responses=(200, 400),
        query=("active", "subject", "execution", "limit", "after"),
        reply=durable_views.TriggerPage,
    ),
    Route(
        "PUT",
        "/v1/triggers/{id}",
        durable_views.put_trigger,
        "Create or replace a trigger: activation events, condition, action, context",
        TriggerIn,
        (200, 201, 400, 404),
        reply=durable_views.TriggerView,
    ),
    Route(
        "GET",
        "/v1/triggers/{id}",
        durable_views.get_trigger,
        "Get a trigger: its context and how many times it fired",
        responses=(200, 404),
        reply=durable_views.TriggerView,
    ),
    Route(
        "GET",
        "/v1/apps",
        workflows.list_apps,
        "Workflow apps, with their steps' graph",
        reply=workflows.AppList,
    ),
    Route(
        "GET",
        "/v1/apps/{name}",
        workflows.get_app,
        "A workflow app: its Start, functions, and the steps each may send on to",
        responses=(200, 404),
        reply=workflows.AppView,
    ),
    Route(
        "PUT",
        "/v1/apps/{name}",
        workflows.put_app,
        "Deploy (or replace) a workflow app in the unum style: the body is its folder as "
        "a tar.gz or zip (unum-template.yaml at its root); each function becomes "
        "<app>.<Function>",
        "archive",
        (200, 201, 400),
        reply=workflows.AppView,
    ),
    Route(
        "POST",
        "/v1/apps/{name}/sessions",
        workflows.start_session,
        "Start a session: the body is the event (unum's {Data, Fan-out}, or a bare JSON "
        "value). blocking=true (default) waits up to 'timeout' seconds for its end (200), "
        "else 202 with its id",
        "params",
        (200, 202, 400, 404, 429, 503),
        ("blocking", "timeout"),
        reply=workflows.SessionView,
    ),
    Route(
        "GET",
        "/v1/apps/{name}/sessions",
        workflows.list_sessions,
        "An app's sessions, newest first",
        responses=(200, 400, 404),
        query=("limit",),
        reply=workflows.SessionList,
    ),
    Route(
        "GET",
        "/v1/apps/{name}/sessions/{id}",
        workflows.get_session,
        "A session: its status, result, and every instance with its call",
        responses=(200, 404),
        reply=workflows.SessionView,
    ),
    Route(
        "GET",
        "/v1/sessions/{id}",
        workflows.get_any_session,
        "A session by its id, whatever its app",
        responses=(200, 404),
        reply=workflows.SessionView,
    ),
    Route(
        "DELETE",
        "/v1/apps/{name}/sessions/{id}",
        workflows.cancel_session,
        "Cancel a running session: its instances not started yet do not run",
        responses=(200, 404),
        reply=workflows.SessionView,
    ),
    Route(
        "DELETE",
        "/v1/triggers/{id}",
        durable_views.delete_trigger,
        "Delete a trigger",
        responses=(204, 404),
    ),
    Route(
        "POST",
        "/v1/executions",
        durable_views.start_execution,
        "Start a durable coordinator: a function run again, with its history, each time "
        "the calls it waits for end (an id started already: 200 and that execution)",
        ExecutionIn,
        (200, 201, 400, 404),
        reply=durable_views.ExecutionView,
    ),
    Route(
        "GET",
        "/v1/executions",
        durable_views.list_executions,
        "Executions newest first, without their steps, paginated",
        responses=(200, 400),
        query=("limit", "before"),
        reply=durable_views.ExecutionPage,
    ),
    Route(
        "GET",
        "/v1/executions/{id}",
        durable_views.get_execution,
        "An execution: status, result, runs, and each step with its calls",
        responses=(200, 404),
        reply=durable_views.ExecutionView,
    ),
    Route(
        "GET",
        "/v1/nodes",
        views.list_nodes,
        "Live workers, their load and warm sandboxes",
        reply=views.NodeList,
    ),
    Route(
        "GET",
        "/v1/keeper/nodes",
        keeper_views.get_keeper_node,
        "A znode of the keeper's tree (read-only): its stat, the first KiB of its data, "
        "its children's names; 'path' (default /)",
        responses=(200, 400, 404, 503),
        query=("path",),
        tag="operations",
        reply=keeper_views.Znode,
    ),
    Route(
        "GET",
        "/v1/packages/{sha256}",
        views.get_package,
        "A function package or build artifact by sha256 (workers fetch them here)",
        responses=(200, 404),
        reply=("application/octet-stream",),
    ),
    Route(
        "PUT",
        "/v1/packages/{sha256}",
        views.put_package,
        "Store a file under its sha256 (a worker's build artifact; a tar.gz or zip within "
        "the package limits)",
        "binary",
        (200, 201, 400, 413, 415),
        reply=views.PackageStored,
    ),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.handler.__name__)


def route_keys(app: web.Application) -> set[tuple[str, Any]]:
    """(method, path) of every route the app serves, for checking the document."""
    keys = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method != "HEAD":
                keys.add((route.method, path))
    return keys
