"""HTTP handlers of workflow apps and their sessions (routes in services/api/routes.py).

The api deploys an app (each function becomes ``<app>.<Function>`` with its step) and
starts a session by storing it with its Start call and dispatching that call. From
there on it only places the calls workers make; it never decides a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from services.api.catalog import Catalog, PackageStore, StagedPackage
from services.api.views import (
    CATALOG,
    DB,
    DB_DEADLINE,
    DISPATCHER,
    SETTINGS,
    decode_json,
    iso,
    json_response,
    limits_from,
    query_bool,
    query_float,
    query_limit,
    who,
)
from services.common.archive import extract_package
from services.common.errors import BadRequest, NotFound, TooLarge, Unavailable
from services.common.models import (
    Function,
    Limits,
    NewCall,
    Runtime,
    Session,
    SessionInstance,
    Step,
    check_name,
)
from services.common.tasks import retrying

from .config import load_app
from .continuation import call_uuid
from .payload import check_fan_out, instance_name, make

# The runtime of every workflow function: fum's Python image, running Lambda handlers.
LAMBDA_RUNTIME = Runtime(
    name="unum-python",
    image="pythonruntime",
    path="/ws",
    dependencies="test ! -s requirements.txt || pip3 install -r requirements.txt",
    run="python3 -m fum.lambda_runtime app:lambda_handler",
)
FINAL = frozenset({"DONE", "ERROR", "CANCELLED"})
POLL = 1.0  # seconds between looks at the db while a blocking start waits (a lost word)


class StepView(msgspec.Struct, rename="camel"):
    """One function of an app and the steps it may send its output on (its ``Next``)."""

    name: str
    function: str
    next: list[str]


class AppView(msgspec.Struct, rename="camel"):
    name: str
    start: str
    functions: list[str]
    runtime: str
    steps: list[StepView] = []


class AppList(msgspec.Struct):
    items: list[AppView]


def app_view(name: str, steps: list[Step]) -> AppView:
    """An app as its functions' steps say it: its Start, functions and graph."""
    return AppView(
        name=name,
        start=next((s.name for s in steps if s.start), ""),
        functions=sorted(s.function for s in steps),
        runtime=LAMBDA_RUNTIME.name,
        steps=[
            StepView(s.name, s.function, [n.name for n in s.next])
            for s in sorted(steps, key=lambda s: s.name)
        ],
    )


class InstanceView(msgspec.Struct, rename="camel"):
    name: str
    call_num: int
    func_name: str
    status: str
    result: msgspec.Raw | None
    error: str | None
    ends: bool


class SessionView(msgspec.Struct, rename="camel"):
    id: str
    app: str
    status: str
    result: msgspec.Raw | None
    error: str | None
    created_at: str | None
    finished_at: str | None
    duration_ms: float | None
    instances: list[InstanceView] | None = None


class SessionList(msgspec.Struct):
    items: list[SessionView]  # without their instances


def session_view(s: Session, instances: list[SessionInstance] | None = None) -> SessionView:
    duration = None if s.finished_at is None else (s.finished_at - s.created_at) * 1000
    return SessionView(
        s.id,
        s.app,
        s.status,
        None if s.result is None else msgspec.Raw(s.result),
        s.error,
        iso(s.created_at),
        iso(s.finished_at),
        duration,
        None
        if instances is None
        else [
            InstanceView(
                i.name,
                i.call_num,
                i.func_name,
                i.status,
                None if i.result is None else msgspec.Raw(i.result),
                i.error,
                i.ends,
            )
            for i in instances
        ],
    )


def app_functions(catalog: Catalog, app: str) -> list[Function]:
    return [f for f in catalog.functions.values() if f.workflow and f.workflow.app == app]


# ---- deploy


def _folder_package(folder: Path, packages: PackageStore) -> StagedPackage:
    """A function's folder as a tar.gz package, staged in the store."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    staged = packages.stage()
    staged.write(buf.getvalue())
    staged.close()
    return staged


def _build(archive: Path, name: str, packages: PackageStore) -> list[tuple[Step, StagedPackage]]:
    """Unpack and check the app, then stage one package per function (on a thread)."""
    with tempfile.TemporaryDirectory(prefix="fum-app-") as tmp:
        extract_package(archive, Path(tmp), packages.limits)
        app = load_app(Path(tmp), name)
        return [(f.step, _folder_package(f.folder, packages)) for f in app.functions]


async def put_app(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    check_name("app", name)
    app, catalog = request.app, request.app[CATALOG]
    limit = app[SETTINGS].max_package_mb * 1024 * 1024
    staged = catalog.packages.stage()
    built: list[tuple[Step, StagedPackage]] = []
    try:
        while chunk := await request.content.read(1 << 16):
            staged.write(chunk)
            if staged.size > limit:
                raise TooLarge(f"the app is larger than {limit >> 20} MiB")
        staged.close()
        if staged.size == 0:
            raise BadRequest("the body is empty: send the app folder as a tar.gz or a zip")
        built = await asyncio.to_thread(_build, staged.path, name, catalog.packages)
        # Checked: from here on, it is stored.
        if catalog.runtimes.get(LAMBDA_RUNTIME.name) is None or _differs(
            catalog.runtimes[LAMBDA_RUNTIME.name], LAMBDA_RUNTIME
        ):
            await catalog.put_runtime(LAMBDA_RUNTIME)
        before = {f.name for f in app_functions(catalog, name)}
        limits = limits_from({}, Limits(), app[SETTINGS].default_timeout)
        for step, package in built:
            old = catalog.functions.get(step.function)
            await catalog.put_function(
                step.function,
                LAMBDA_RUNTIME.name,
                f"{step.name}.tar.gz",
                package,
                old.limits if old is not None else limits,
                workflow=step,
            )
        kept = {step.function for step, _ in built}
        for gone in sorted(before - kept):
            await catalog.delete_function(gone)
    finally:
        staged.discard()
        for _, package in built:
            package.discard()
    return json_response(app_view(name, [step for step, _ in built]), 200 if before else 201)


def _differs(stored: Runtime, wanted: Runtime) -> bool:
    return (stored.image, stored.path, stored.dependencies, stored.run) != (
        wanted.image,
        wanted.path,
        wanted.dependencies,
        wanted.run,
    )


# ---- sessions


def _start_payload(event: Any, session: str) -> tuple[dict[str, Any], Any]:
    """unum's ingress: ``{"Data": {"Source": "http", "Value": ...}, "Fan-out": ...}``, or
    a bare JSON value taken as the Value; the payload and its Fan-out."""
    if not (isinstance(event, dict) and "Data" in event):
        return make(event, session, None), None
    data = event["Data"]
    if not isinstance(data, dict) or "Value" not in data:
        raise BadRequest('Data must be an object with a "Value"')
    if data.get("Source", "http") != "http":
        raise BadRequest('Data.Source: only "http" (inline data) starts a session')
    unknown = set(event) - {"Data", "Fan-out", "Session"}
    if unknown:
        raise BadRequest(f"unknown fields {sorted(unknown)}: Data and Fan-out start a session")
    try:
        fan_out = check_fan_out(event.get("Fan-out"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return make(data["Value"], session, fan_out), fan_out


async def start_session(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    app, catalog, dispatcher = request.app, request.app[CATALOG], request.app[DISPATCHER]
    starts = [f for f in app_functions(catalog, name) if f.workflow and f.workflow.start]
    if not starts:
        raise NotFound(f"no app {name!r}")
    (start,) = starts
    assert start.workflow is not None
    settings = app[SETTINGS]
    blocking = query_bool(request, "blocking", True)
    wait = query_float(request, "timeout", settings.blocking_timeout) if blocking else None
    wait = min(wait, settings.blocking_timeout) if wait else None
    body = (await request.read()).strip() or b"null"
    session_id = uuid.uuid4().hex
    payload, fan_out = _start_payload(decode_json(body, Any, "event"), session_id)
    instance = instance_name(start.workflow.name, fan_out)
    created_at = time.time()
    new = NewCall(
        uuid=call_uuid(session_id, instance),
        func_name=start.name,
        params=msgspec.json.encode(payload),
        created_at=created_at,
        caller=who(request)[0],
    )
    session = Session(id=session_id, app=name, created_at=created_at)
    dispatcher.reserve(start.name)  # 429 here, before anything is stored
    ended = dispatcher.wait_session(session_id) if wait else None
    try:
        try:
            call = await retrying(
                lambda: app[DB].start_session(session, instance, new), DB_DEADLINE, "start"
            )
        except BaseException:
            dispatcher.release(start.name)
            raise
        dispatcher.dispatch(call, start.limits.timeout)
        if ended is not None and wait:
            await _wait_end(app, session_id, ended, wait)
    finally:
        if ended is not None:
            dispatcher.forget_session(session_id, ended)
    reply = await app[DB].get_session(session_id)
    status = 200 if blocking and reply.session.status in FINAL else 202
    location = {"Location": f"/v1/apps/{name}/sessions/{session_id}"}
    return json_response(session_view(reply.session, reply.instances), status, location)


async def _wait_end(
    app: web.Application, session_id: str, ended: asyncio.Future[str], wait: float
) -> None:
    """Until the session ends, or ``wait`` seconds: a worker's word, or the db's."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended), min(left, POLL))
            return
        with contextlib.suppress(Unavailable):
            if (await app[DB].get_session(session_id)).session.status in FINAL:
                return


async def _session_of(request: web.Request) -> tuple[Session, list[SessionInstance]]:
    name, session_id = request.match_info["name"], request.match_info["id"]
    reply = await request.app[DB].get_session(session_id)
    if reply.session.app != name:
        raise NotFound(f"no session {session_id!r} of app {name!r}")
    return reply.session, reply.instances


async def get_session(request: web.Request) -> web.Response:
    return json_response(session_view(*await _session_of(request)))


async def get_any_session(request: web.Request) -> web.Response:
    """A session by its id alone (ids are uuids: no app needed to tell them apart)."""
    reply = await request.app[DB].get_session(request.match_info["id"])
    return json_response(session_view(reply.session, reply.instances))


def _apps(catalog: Catalog) -> dict[str, list[Step]]:
    apps: dict[str, list[Step]] = {}
    for function in catalog.functions.values():
        if function.workflow is not None:
            apps.setdefault(function.workflow.app, []).append(function.workflow)
    return apps


async def list_apps(request: web.Request) -> web.Response:
    apps = _apps(request.app[CATALOG])
    return json_response(AppList([app_view(name, apps[name]) for name in sorted(apps)]))


async def get_app(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    steps = _apps(request.app[CATALOG]).get(name)
    if steps is None:
        raise NotFound(f"no app {name!r}")
    return json_response(app_view(name, steps))


async def list_sessions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not app_functions(request.app[CATALOG], name):
        raise NotFound(f"no app {name!r}")
    limit = query_limit(request)
    sessions = await request.app[DB].list_sessions(name, limit=limit)
    return json_response(SessionList([session_view(s) for s in sessions]))


async def cancel_session(request: web.Request) -> web.Response:
    await _session_of(request)  # 404 for a session of another app
    reply = await request.app[DB].cancel_session(request.match_info["id"])
    return json_response(session_view(reply.session, reply.instances))
