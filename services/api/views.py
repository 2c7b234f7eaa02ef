"""HTTP handlers: the original routes and the versioned ``/v1`` API beside them."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from aiohttp import BodyPartReader, web

from services.common.db_client import DbClient
from services.common.errors import BadRequest, NotFound, TooLarge, Unavailable
from services.common.models import (
    FINAL_STATUSES,
    LIMIT_NAMES,
    STATUSES,
    Call,
    Limits,
    NewCall,
    Runtime,
)
from services.common.tasks import retrying

from .callnums import CallNumbers
from .catalog import Catalog
from .dispatch import Dispatcher
from .settings import ApiSettings

SETTINGS = web.AppKey("settings", ApiSettings)
DB = web.AppKey("db", DbClient)
CATALOG = web.AppKey("catalog", Catalog)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
CALL_NUMS = web.AppKey("call_nums", CallNumbers)

_json = msgspec.json.Encoder()
DB_DEADLINE = 30.0  # seconds a write waits for a db that does not answer (a restart)
LOGS_WAIT = 2.0  # seconds a reported call's logs may take to reach the db


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_json.encode(body), status=status, headers=headers, content_type="application/json"
    )


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


# ---- representations


class RuntimeIn(msgspec.Struct, forbid_unknown_fields=False):
    """A runtime as clients send it; ``name`` defaults to ``image`` (the original design)."""

    image: str
    run: str
    path: str = "/ws"
    dependencies: str = ""
    name: str | None = None

    def runtime(self, name: str | None = None) -> Runtime:
        return Runtime(
            name=name or self.name or self.image,
            image=self.image,
            run=self.run,
            path=self.path,
            dependencies=self.dependencies,
        )


class RuntimeView(msgspec.Struct, rename="camel"):
    name: str
    image: str
    path: str
    dependencies: str
    run: str
    created_at: str | None
    updated_at: str | None


def runtime_view(r: Runtime) -> RuntimeView:
    return RuntimeView(
        r.name, r.image, r.path, r.dependencies, r.run, iso(r.created_at), iso(r.updated_at)
    )


class FunctionView(msgspec.Struct, rename="camel"):
    name: str
    runtime: str
    sha256: str
    filename: str
    size: int
    limits: Limits
    created_at: str | None
    updated_at: str | None


def function_view(f: Any) -> FunctionView:
    return FunctionView(
        f.name,
        f.runtime,
        f.sha256,
        f.filename,
        f.size,
        f.limits,
        iso(f.created_at),
        iso(f.updated_at),
    )


class CallView(msgspec.Struct, rename="camel"):
    call_num: int
    func_name: str
    params: msgspec.Raw
    status: str
    result: msgspec.Raw | None
    error: str | None
    node_id: int | None
    attempts: int
    start: str | None
    init_ms: float | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None  # started -> finished
    wait_ms: float | None  # created -> started


def call_view(c: Call) -> CallView:
    duration = (
        None
        if c.started_at is None or c.finished_at is None
        else (c.finished_at - c.started_at) * 1000
    )
    wait = None if c.started_at is None else (c.started_at - c.created_at) * 1000
    return CallView(
        c.call_num,
        c.func_name,
        msgspec.Raw(c.params),
        c.status,
        None if c.result is None else msgspec.Raw(c.result),
        c.error,
        c.node_id,
        c.attempts,
        c.start,
        c.init_ms,
        iso(c.created_at),
        iso(c.started_at),
        iso(c.finished_at),
        duration,
        wait,
    )


class LegacyCall(msgspec.Struct):
    """A call as the original design's ``/call/:callNum`` shows it: result as text."""

    funcName: str
    params: msgspec.Raw
    callNum: int
    status: str
    result: str


def legacy_call(c: Call) -> LegacyCall:
    result = c.result.decode() if c.result is not None else c.error or ""
    return LegacyCall(c.func_name, msgspec.Raw(c.params), c.call_num, c.status, result)


# ---- request helpers


async def read_json(request: web.Request, kind: Any) -> Any:
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def query_float(request: web.Request, name: str, default: float | None) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number") from None
    if value < 0:
        raise BadRequest(f"query parameter {name!r} must not be negative")
    return value


def query_int(request: web.Request, name: str) -> int | None:
    value = query_float(request, name, None)
    return None if value is None else int(value)


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false")


def match_int(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise NotFound(f"no {name} {request.match_info[name]!r}") from None


class Upload(msgspec.Struct):
    filename: str
    data: bytes
    fields: dict[str, str]


async def read_upload(request: web.Request) -> Upload:
    """The multipart form: the package in field ``module``, other fields as text."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the package as multipart/form-data in the field 'module'")
    limit = request.app[SETTINGS].max_package_mb * 1024 * 1024
    reader = await request.multipart()
    filename, data, fields = "", b"", {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "module":
            filename = part.filename or "package"
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the package is larger than {limit // (1024 * 1024)} MiB")
                chunks.append(chunk)
            data = b"".join(chunks)
        else:
            fields[part.name] = (await part.read()).decode()
    if not data:
        raise BadRequest("missing the package: multipart field 'module'")
    return Upload(filename, data, fields)


def limits_from(fields: dict[str, Any], base: Limits, default_timeout: float) -> Limits:
    """``base`` with the limits named in ``fields`` (form fields or JSON) replaced."""
    patch = {k: v for k, v in fields.items() if k in LIMIT_NAMES}
    merged = {**msgspec.to_builtins(base), **patch}
    if "timeout" not in fields and base == Limits():
        merged["timeout"] = default_timeout
    try:
        return msgspec.convert(merged, Limits, strict=False).check()
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid limits: {exc}") from None


# ---- invocation (shared by the original and the v1 routes)


async def invoke(app: web.Application, func_name: str, params: bytes, wait: float | None) -> Call:
    """Store the call and dispatch it; when ``wait``, wait up to that long for its end.

    A non-blocking call is stored, then dispatched: the 202 says it is durable. A blocking
    call is numbered here (``CallNumbers``) and dispatched at once; the api stores it if it
    is still running after ``store_delay``, and otherwise its worker's result write creates
    it (one db write for a short call; see docs/SCHEDULING.md, "Durability")."""
    timeout = app[CATALOG].function(func_name).limits.timeout
    dispatcher, db = app[DISPATCHER], app[DB]
    dispatcher.reserve(func_name)  # 429 here, before anything is stored
    new = NewCall(uuid=uuid.uuid4().hex, func_name=func_name, params=params, created_at=time.time())

    async def store() -> Call:  # idempotent by the uuid: sent again after a db restart
        return await retrying(lambda: db.create_call(new), DB_DEADLINE, "create call")

    try:
        if wait:
            new = msgspec.structs.replace(new, call_num=await app[CALL_NUMS].take())
        else:
            call = await store()
    except BaseException:
        dispatcher.release(func_name)
        raise
    if not wait:
        dispatcher.dispatch(call, timeout)
        return call
    assert new.call_num is not None
    call = new.pending(new.call_num)
    future = dispatcher.wait(call.call_num)
    dispatcher.dispatch(call, timeout, stored=False)
    delay = app[SETTINGS].store_delay
    try:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), min(wait, delay))
        # Still running: stored now, so it is listed while it runs and found after a 202
        # (the worker's write may have created it meanwhile: the create finds it).
        await store()
        return await asyncio.wait_for(asyncio.shield(future), max(wait - delay, 0))
    except TimeoutError:
        dispatcher.forget(call.call_num, future)
        return await fetch_call(app, call.call_num)
    except Unavailable as exc:
        dispatcher.forget(call.call_num, future)
        raise Unavailable(f"{exc.message} (call {call.call_num})") from None
    except BaseException:
        dispatcher.forget(call.call_num, future)
        raise


def check_params(body: bytes) -> bytes:
    body = body.strip() or b"{}"
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON params: {exc}") from None
    return body


# ---- the original routes


class LegacyInvoke(msgspec.Struct):
    funcName: str
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


async def legacy_register_runtime(request: web.Request) -> web.Response:
    body = await read_json(request, RuntimeIn)
    runtime, _ = await request.app[CATALOG].put_runtime(body.runtime())
    return json_response(runtime_view(runtime))


async def legacy_register_function(request: web.Request) -> web.Response:
    upload = await read_upload(request)
    catalog = request.app[CATALOG]
    name = request.match_info["funcName"]
    base = catalog.functions[name].limits if name in catalog.functions else Limits()
    limits = limits_from(upload.fields, base, request.app[SETTINGS].default_timeout)
    function, _ = await catalog.put_function(
        name, request.match_info["runtime"], upload.filename, upload.data, limits
    )
    return json_response(function_view(function))


async def legacy_invoke(request: web.Request) -> web.Response:
    body = await read_json(request, LegacyInvoke)
    call = await invoke(request.app, body.funcName, check_params(bytes(body.params)), None)
    return json_response({"callNum": call.call_num})


async def legacy_runtimes(request: web.Request) -> web.Response:
    return json_response(list(request.app[CATALOG].runtimes))


async def legacy_functions(request: web.Request) -> web.Response:
    return json_response(list(request.app[CATALOG].functions))


async def legacy_calls(request: web.Request) -> web.Response:
    """The whole call store as the original design shows it: ``{"c1": {...}, ...}``."""
    db, calls, before = request.app[DB], {}, None
    while True:
        page = await db.list_calls(before=before, limit=1000)
        for c in page:
            calls[f"c{c.call_num}"] = legacy_call(c)
        if len(page) < 1000:
            break
        before = page[-1].call_num
    ordered = dict(sorted(calls.items(), key=lambda kv: int(kv[0][1:])))
    return json_response(ordered)


async def fetch_call(app: web.Application, num: int) -> Call:
    """A call as the db has it, or as its worker just reported it (the db may be a step
    behind: a worker reports a call dispatched once before writing its result)."""
    recent = app[DISPATCHER].recent.get(num)
    return recent if recent is not None else await app[DB].get_call(num)


async def legacy_call_get(request: web.Request) -> web.Response:
    call = await fetch_call(request.app, match_int(request, "callNum"))
    return json_response(legacy_call(call))


# ---- /v1


async def healthz(request: web.Request) -> web.Response:
    await request.app[DB].ping()
    health = {"status": "ok", "nodes": len(request.app[DISPATCHER].nodes)}
    if request.app[SETTINGS].keeper_hosts:
        health["keeper"] = request.app[SETTINGS].keeper_hosts
    return json_response(health)


async def list_runtimes(request: web.Request) -> web.Response:
    items = [runtime_view(r) for r in request.app[CATALOG].runtimes.values()]
    return json_response({"items": items})


async def create_runtime(request: web.Request) -> web.Response:
    body = await read_json(request, RuntimeIn)
    if body.name is None:
        raise BadRequest("missing field 'name'")
    runtime, _ = await request.app[CATALOG].put_runtime(body.runtime(), create_only=True)
    return json_response(runtime_view(runtime), 201, {"Location": f"/v1/runtimes/{runtime.name}"})


async def put_runtime(request: web.Request) -> web.Response:
    body = await read_json(request, RuntimeIn)
    name = request.match_info["name"]
    if body.name not in (None, name):
        raise BadRequest(f"the body names runtime {body.name!r}, the path {name!r}")
    runtime, created = await request.app[CATALOG].put_runtime(body.runtime(name))
    return json_response(runtime_view(runtime), 201 if created else 200)


async def get_runtime(request: web.Request) -> web.Response:
    return json_response(runtime_view(request.app[CATALOG].runtime(request.match_info["name"])))


async def delete_runtime(request: web.Request) -> web.Response:
    await request.app[CATALOG].delete_runtime(request.match_info["name"])
    return web.Response(status=204)


async def list_functions(request: web.Request) -> web.Response:
    items = [function_view(f) for f in request.app[CATALOG].functions.values()]
    return json_response({"items": items})


async def put_function(request: web.Request) -> web.Response:
    upload = await read_upload(request)
    catalog = request.app[CATALOG]
    name = request.match_info["name"]
    runtime = upload.fields.get("runtime")
    existing = catalog.functions.get(name)
    if runtime is None:
        if existing is None:
            raise BadRequest("missing form field 'runtime'")
        runtime = existing.runtime
    base = existing.limits if existing else Limits()
    limits = limits_from(upload.fields, base, request.app[SETTINGS].default_timeout)
    function, created = await catalog.put_function(
        name, runtime, upload.filename, upload.data, limits
    )
    return json_response(function_view(function), 201 if created else 200)


async def get_function(request: web.Request) -> web.Response:
    return json_response(function_view(request.app[CATALOG].function(request.match_info["name"])))


async def patch_function(request: web.Request) -> web.Response:
    """Change some limits; ``null`` puts one back to no limit."""
    catalog = request.app[CATALOG]
    function = catalog.function(request.match_info["name"])
    fields = await read_json(request, dict[str, Any])
    unknown = set(fields) - set(LIMIT_NAMES)
    if unknown:
        raise BadRequest(f"unknown limits {sorted(unknown)}; known: {', '.join(LIMIT_NAMES)}")
    limits = limits_from(fields, function.limits, request.app[SETTINGS].default_timeout)
    return json_response(function_view(await catalog.update_limits(function.name, limits)))


async def delete_function(request: web.Request) -> web.Response:
    await request.app[CATALOG].delete_function(request.match_info["name"])
    return web.Response(status=204)


async def get_package(request: web.Request) -> web.FileResponse:
    path = request.app[CATALOG].packages.path(request.match_info["sha256"])
    if not path.exists():
        raise NotFound(f"no package {request.match_info['sha256']}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


async def invoke_function(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    blocking = query_bool(request, "blocking", True)
    settings = request.app[SETTINGS]
    wait = query_float(request, "timeout", settings.blocking_timeout) if blocking else None
    params = check_params(await request.read())
    call = await invoke(
        request.app, name, params, min(wait, settings.blocking_timeout) if wait else None
    )
    location = {"Location": f"/v1/calls/{call.call_num}"}
    if blocking and call.status in FINAL_STATUSES:
        return json_response(call_view(call), 200, location)
    return json_response(call_view(call), 202, location)


MAX_BATCH = 10_000


class CallIn(msgspec.Struct, forbid_unknown_fields=True):
    function: str
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """Many calls in one request: how a map of 10,000 items is a few requests."""

    calls: list[CallIn]


class WaitIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Wait for calls to finish: any of them, or all, up to ``timeout`` seconds."""

    call_nums: list[int]
    timeout: float = 0.0
    return_when: Literal["FIRST_COMPLETED", "ALL_COMPLETED"] = "ALL_COMPLETED"


async def create_calls(request: web.Request) -> web.Response:
    """Store a batch of calls (all or none: an unknown function stores nothing), then place them."""
    body = await read_json(request, BatchIn)
    if not 1 <= len(body.calls) <= MAX_BATCH:
        raise BadRequest(f"send between 1 and {MAX_BATCH} calls")
    catalog = request.app[CATALOG]
    timeouts = {c.function: catalog.function(c.function).limits.timeout for c in body.calls}
    counts: dict[str, int] = {}
    for c in body.calls:
        counts[c.function] = counts.get(c.function, 0) + 1
    dispatcher = request.app[DISPATCHER]
    reserved: list[tuple[str, int]] = []
    try:
        for function, count in counts.items():  # all or nothing: 429 stores no call
            dispatcher.reserve(function, count)
            reserved.append((function, count))
        now = time.time()
        new = [
            NewCall(
                uuid=uuid.uuid4().hex,
                func_name=c.function,
                params=check_params(bytes(c.params)),
                created_at=now,
            )
            for c in body.calls
        ]
        db = request.app[DB]
        calls = await retrying(lambda: db.create_calls(new), DB_DEADLINE, "create calls")
    except BaseException:
        for function, count in reserved:
            dispatcher.release(function, count)
        raise
    for call in calls:
        dispatcher.dispatch(call, timeouts[call.func_name])
    return json_response({"callNums": [c.call_num for c in calls]}, 202)


async def wait_calls(request: web.Request) -> web.Response:
    """The calls among ``callNums`` that are finished, once any (or all) are, or at timeout."""
    body = await read_json(request, WaitIn)
    if len(body.call_nums) > MAX_BATCH:
        raise BadRequest(f"wait for at most {MAX_BATCH} calls")
    if body.timeout < 0:
        raise BadRequest("timeout must not be negative")
    wanted = list(dict.fromkeys(body.call_nums))
    dispatcher, db = request.app[DISPATCHER], request.app[DB]
    # Listen before reading the db, so a call finishing in between is not missed.
    futures = {num: dispatcher.wait(num) for num in wanted}
    try:
        stored = {c.call_num: c for c in await db.get_calls(wanted)}
        stored.update((n, dispatcher.recent[n]) for n in wanted if n in dispatcher.recent)
        missing = set(wanted) - set(stored)
        if missing:
            raise NotFound(f"no calls {sorted(missing)[:10]}")
        done = {n: c for n, c in stored.items() if c.status in FINAL_STATUSES}
        waiting = [futures[n] for n in wanted if n not in done]
        enough = done if body.return_when == "FIRST_COMPLETED" else len(done) == len(wanted)
        if waiting and not enough and body.timeout > 0:
            when = (
                asyncio.FIRST_COMPLETED
                if body.return_when == "FIRST_COMPLETED"
                else asyncio.ALL_COMPLETED
            )
            await asyncio.wait(
                waiting,
                timeout=min(body.timeout, request.app[SETTINGS].blocking_timeout),
                return_when=when,
            )
            for num, future in futures.items():
                if future.done() and not future.cancelled():
                    done[num] = future.result()
    finally:
        for num, future in futures.items():
            dispatcher.forget(num, future)
    return json_response(
        {
            "done": [call_view(done[n]) for n in wanted if n in done],
            "pending": [n for n in wanted if n not in done],
        }
    )


async def list_calls(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    limit = query_int(request, "limit") or 100
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000")
    function = request.query.get("function")
    calls = await request.app[DB].list_calls(
        func_name=function,
        status=status,
        before=query_int(request, "before"),
        after=query_int(request, "after"),
        limit=limit,
    )
    next_url = None
    if len(calls) == limit:
        query = {k: v for k, v in request.query.items() if k not in ("before", "after")}
        query["before"] = str(calls[-1].call_num)
        next_url = str(request.rel_url.with_query(query))
    return json_response({"items": [call_view(c) for c in calls], "next": next_url})


async def get_call(request: web.Request) -> web.Response:
    return json_response(call_view(await fetch_call(request.app, match_int(request, "callNum"))))


async def get_call_logs(request: web.Request) -> web.Response:
    num = match_int(request, "callNum")
    db = request.app[DB]
    if num in request.app[DISPATCHER].recent:
        # Reported finished, perhaps before its worker wrote it (with its output) to the
        # db, which follows within milliseconds: a client that was answered reads its logs.
        # A short blocking call is not in the db at all before that write.
        deadline = time.monotonic() + LOGS_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(NotFound):
                if (await db.get_call(num)).status in FINAL_STATUSES:
                    break
            await asyncio.sleep(0.005)
    logs = await db.get_call_logs(num)
    return json_response({"callNum": num, "logs": logs})


async def list_nodes(request: web.Request) -> web.Response:
    nodes = [
        {
            "nodeId": n.node_id,
            "capacity": n.capacity,
            "preload": n.preload,
            "driver": n.driver,
            "busy": n.busy,
            "queued": n.queued,
            "inFlight": len(n.calls),
            "idle": n.idle,
            "generic": n.generic,
            "registeredAt": iso(n.registered_at),
            "heardAt": iso(n.heard_at),
        }
        for n in sorted(request.app[DISPATCHER].nodes.values(), key=lambda n: n.node_id)
    ]
    return json_response({"items": nodes})
