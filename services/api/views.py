"""HTTP handlers: the original routes and the versioned ``/v1`` API beside them."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from services.common.db_client import DbClient
from services.common.errors import BadRequest, NotFound, TooLarge, Unavailable
from services.common.metrics import CONTENT_TYPE_LATEST, exposition
from services.common.models import (
    FINAL_STATUSES,
    LIMIT_NAMES,
    STATUSES,
    Build,
    Call,
    Function,
    Limits,
    NewCall,
    Runtime,
)
from services.common.tasks import retrying

from .callnums import CallNumbers
from .catalog import Catalog, StagedPackage
from .dispatch import Dispatcher
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import Keyed, Keys, call_uuid, check_key, digest, mismatch
from .security import CALLER
from .settings import ApiSettings

SETTINGS = web.AppKey("settings", ApiSettings)
DB = web.AppKey("db", DbClient)
CATALOG = web.AppKey("catalog", Catalog)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
CALL_NUMS = web.AppKey("call_nums", CallNumbers)
KEYS = web.AppKey("keys", Keys)

log = structlog.get_logger()
_json = msgspec.json.Encoder()
LIST_PAGE = 1000  # the most a page of a listing holds (the db's most)
DEFAULT_PAGE = 100
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


# ---- representations: every JSON body the api answers is one of these Structs (or a
# list or dict of them), so the OpenAPI document's schemas are the encoder's own
# (services/api/openapi.py).


class ErrorDetail(msgspec.Struct):
    code: str  # bad_request, not_found, unauthorized, ... (services/common/errors.py)
    message: str


class ErrorBody(msgspec.Struct):
    """Every error answer (4xx, 5xx): what went wrong, for a program and for a person."""

    error: ErrorDetail


def error_body(code: str, message: str) -> ErrorBody:
    return ErrorBody(ErrorDetail(code, message))


class Health(msgspec.Struct, omit_defaults=True):
    status: str  # "ok"
    nodes: int  # live workers
    keeper: str | None = None  # the keeper as clients reach it (FUM_KEEPER_CLIENT_HOSTS)


# What runtime fields may hold: an image reference, an absolute path, shell commands.
Image = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")]
ContainerPath = Annotated[str, msgspec.Meta(pattern=r"^/[^\x00-\x1f]{0,1023}$")]
Command = Annotated[str, msgspec.Meta(max_length=8192, pattern=r"^[^\x00]*$")]


class RuntimeIn(msgspec.Struct, forbid_unknown_fields=True):
    """A runtime as clients send it; ``name`` defaults to ``image`` (the original design).
    A field it does not know is an error, not silently dropped."""

    image: Image
    run: Command
    path: ContainerPath = "/ws"
    dependencies: Command = ""
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


class RuntimePage(msgspec.Struct):
    items: list[RuntimeView]
    next: str | None  # the URL of the next page, if this one is full


def runtime_view(r: Runtime) -> RuntimeView:
    return RuntimeView(
        r.name, r.image, r.path, r.dependencies, r.run, iso(r.created_at), iso(r.updated_at)
    )


class BuildView(msgspec.Struct, rename="camel"):
    """A function's build: ``status`` building, ready or failed; ``log`` the tail of the
    dependencies command's output; ``artifact`` the sha256 of what it made."""

    status: str
    log: str
    artifact: str | None
    key: str
    runs: int
    node_id: int | None
    started_at: str | None
    finished_at: str | None


class FunctionView(msgspec.Struct, rename="camel"):
    name: str
    runtime: str
    sha256: str
    filename: str
    size: int
    limits: Limits
    created_at: str | None
    updated_at: str | None
    build: BuildView | None  # None: its runtime installs nothing, so there is no build


class FunctionPage(msgspec.Struct):
    items: list[FunctionView]
    next: str | None


def build_view(b: Build | None) -> BuildView | None:
    if b is None:
        return None
    return BuildView(
        b.status, b.log, b.artifact, b.key, b.runs, b.node_id, iso(b.started_at), iso(b.finished_at)
    )


def function_view(f: Function) -> FunctionView:
    return FunctionView(
        f.name,
        f.runtime,
        f.sha256,
        f.filename,
        f.size,
        f.limits,
        iso(f.created_at),
        iso(f.updated_at),
        build_view(f.build),
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
    caller: str | None  # the name of the API key that created it


class CallPage(msgspec.Struct):
    items: list[CallView]
    next: str | None


class CallNums(msgspec.Struct, rename="camel"):
    call_nums: list[int]


class LegacyInvoked(msgspec.Struct, rename="camel"):
    call_num: int


class Waited(msgspec.Struct):
    """The calls waited for that are finished, and the numbers of the others."""

    done: list[CallView]
    pending: list[int]


class CallLogs(msgspec.Struct, rename="camel"):
    call_num: int
    logs: str


class NodeView(msgspec.Struct, rename="camel"):
    """A live worker as its heartbeats tell the api: load, and per function (or runtime)
    its sandboxes and what placement estimates from (services/common/estimate.py)."""

    node_id: int
    capacity: int
    preload: str
    driver: str
    busy: int
    queued: int
    in_flight: int
    idle: dict[str, int]  # function -> idle warm sandboxes
    generic: dict[str, int]  # runtime -> idle generic sandboxes
    sandboxes: dict[str, int]
    durations: dict[str, float]
    starts: dict[str, float]
    registered_at: str | None
    heard_at: str | None


class NodeList(msgspec.Struct):
    items: list[NodeView]


class PackageStored(msgspec.Struct):
    sha256: str


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
        c.caller,
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


def decode_json(body: bytes, kind: Any, what: str) -> Any:
    """``body`` decoded as ``kind``, or ``BadRequest`` saying why not."""
    try:
        value = msgspec.json.decode(body, type=kind)
        msgspec.msgpack.encode(value)  # what the control plane carries: 64-bit integers
        return value
    except OverflowError:
        raise BadRequest(f"a number in the {what} is beyond 64-bit integers") from None
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON {what}: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the JSON {what} is nested too deeply") from None


async def read_json(request: web.Request, kind: Any) -> Any:
    return decode_json(await request.read(), kind, "request body")


def query_float(request: web.Request, name: str, default: float | None) -> float | None:
    """A non-negative finite number from the query string, or ``default`` when absent."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"query parameter {name!r} must be a finite number, not negative")
    return value


MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last time ISO 8601 writes plainly
# Call numbers are SQLite integers: positive and below 2**63.
MAX_CALL_NUM = (1 << 63) - 1


def query_int(
    request: web.Request, name: str, low: int = 0, high: int = MAX_CALL_NUM
) -> int | None:
    """A whole number from ``low`` to ``high`` from the query string, or None when absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name!r} must be from {low} to {high}")
    return value


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false")


def match_call_num(request: web.Request) -> int:
    """The call number in the path; 404 for anything that cannot be one."""
    raw = request.match_info["callNum"]
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_CALL_NUM:
        return int(raw)
    raise NotFound(f"no call {raw!r}")


class Upload(msgspec.Struct):
    """A function package received to a staging file (``Catalog.put_function`` checks
    and keeps it, or it is removed), with the other form fields."""

    filename: str
    staged: StagedPackage
    fields: dict[str, str]


# The form fields an upload may have besides the package, and how large each may be.
UPLOAD_FIELDS = frozenset({"runtime", *LIMIT_NAMES})
MAX_FIELD = 1024


@contextlib.asynccontextmanager
async def read_upload(request: web.Request) -> AsyncIterator[Upload]:
    """The multipart form: the package in field ``module``, streamed to a staging file
    (within FUM_MAX_PACKAGE_MB, 413 beyond), the other fields as short text. The staging
    file is removed on leaving, whatever happened (a package kept was moved away)."""
    limit = request.app[SETTINGS].max_package_mb * 1024 * 1024
    if request.content_length is not None and request.content_length > limit + (1 << 16):
        raise TooLarge(f"the package is larger than {limit >> 20} MiB")
    staged = request.app[CATALOG].packages.stage()
    try:
        try:
            filename, fields = await _read_form(request, staged, limit)
        except (ValueError, HttpProcessingError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadRequest(f"malformed multipart body: {exc}") from None
        yield Upload(filename, staged, fields)
    finally:
        staged.discard()


async def _read_form(
    request: web.Request, staged: StagedPackage, limit: int
) -> tuple[str, dict[str, str]]:
    reader = await request.multipart()
    filename, fields = None, {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not taken")
        if part.name == "module":
            if filename is not None:
                raise BadRequest("the form has two 'module' fields")
            # shown back to clients: printable, and short
            filename = "".join(c for c in part.filename or "" if c.isprintable())[:255]
            filename = filename or "package"
            while chunk := await part.read_chunk(1 << 16):
                staged.write(chunk)
                if staged.size > limit:
                    raise TooLarge(f"the package is larger than {limit >> 20} MiB")
        elif part.name in UPLOAD_FIELDS:
            value = await part.read_chunk(MAX_FIELD + 1)
            if len(value) > MAX_FIELD or await part.read_chunk(1):
                raise BadRequest(f"form field {part.name!r} is longer than {MAX_FIELD} bytes")
            fields[part.name] = value.decode()
        else:
            known = ", ".join(sorted(UPLOAD_FIELDS))
            raise BadRequest(f"unknown form field {part.name!r}; known: module, {known}")
    if filename is None or staged.size == 0:
        raise BadRequest("missing the package: multipart field 'module'")
    staged.close()
    return filename, fields


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


async def invoke(
    app: web.Application,
    func_name: str,
    params: bytes,
    wait: float | None,
    caller: str | None = None,
    key: str | None = None,
) -> Call:
    """Make the call and dispatch it; when ``wait``, wait up to that long for its end. With
    an Idempotency-Key ``key``, the call the caller's key stands for, made only once."""
    function = app[CATALOG].runnable(func_name)  # 409 when its build failed
    if key is None:
        call, future = await place(app, function, params, wait, caller, uuid.uuid4().hex)
        return call if future is None else await outcome(app, call, future, wait)
    uid, keys = call_uuid(caller, key), app[KEYS]
    async with keys.taken(uid):  # a request with the same key waits for this decision
        keyed = keys.get(uid)
        if keyed is None and not keys.unseen(uid, key):
            found = await retrying(lambda: app[DB].find_calls([uid]), DB_DEADLINE, "find call")
            if found:
                keyed = Keyed(found[0].call_num, found[0].func_name, digest(found[0].params))
        if keyed is None:
            call, future = await place(app, function, params, wait, caller, uid)
            keys.remember(uid, call.call_num, func_name, params)
    if keyed is None:
        return call if future is None else await outcome(app, call, future, wait)
    if not keyed.same(func_name, params):
        raise mismatch(key)
    return await existing_call(app, keyed, uid, params, wait)


async def place(
    app: web.Application,
    function: Function,
    params: bytes,
    wait: float | None,
    caller: str | None,
    uid: str,
) -> tuple[Call, asyncio.Future[Call] | None]:
    """Make a call and dispatch it: the call, and for a blocking one the future of its end.

    A non-blocking call is stored, then dispatched: the 202 says it is durable. A blocking
    call is numbered here (``CallNumbers``) and dispatched at once; ``outcome`` stores it if
    it is still running after ``store_delay``, and otherwise its worker's result write
    creates it (one db write for a short call; see docs/SCHEDULING.md, "Durability")."""
    dispatcher = app[DISPATCHER]
    dispatcher.reserve(function.name)  # 429 here, before anything is stored
    new = NewCall(
        uuid=uid, func_name=function.name, params=params, created_at=time.time(), caller=caller
    )
    try:
        if not wait:
            call = await store(app, new)
        else:
            call = new.pending(await app[CALL_NUMS].take())
    except BaseException:
        dispatcher.release(function.name)
        raise
    timeout = function.limits.timeout
    if not wait:
        dispatcher.dispatch(call, timeout)
        return call, None
    future = dispatcher.wait(call.call_num)
    dispatcher.dispatch(call, timeout, stored=False)
    return call, future


async def store(app: web.Application, new: NewCall) -> Call:
    """Create the call (idempotent by its uuid: sent again after a db restart)."""
    db = app[DB]
    return await retrying(lambda: db.create_call(new), DB_DEADLINE, "create call")


async def outcome(
    app: web.Application, call: Call, future: asyncio.Future[Call], wait: float | None
) -> Call:
    """A blocking call's end, waited for up to ``wait`` seconds; the call as it stands
    then. Stored by the api once it outlasts ``store_delay``."""
    dispatcher = app[DISPATCHER]
    wait = wait or 0.0
    delay = app[SETTINGS].store_delay
    try:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), min(wait, delay))
        # Still running: stored now, so it is listed while it runs and found after a 202
        # (the worker's write may have created it meanwhile: the create finds it).
        await store(app, NewCall.of(call))
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


async def existing_call(
    app: web.Application, keyed: Keyed, uid: str, params: bytes, wait: float | None
) -> Call:
    """The call a repeated key stands for, waited for as its first request would have."""
    dispatcher, num = app[DISPATCHER], keyed.call_num
    future = dispatcher.wait(num) if wait else None
    try:
        try:
            call = await fetch_call(app, num)
        except NotFound:  # a blocking call still running, not stored yet
            call = NewCall(
                uuid=uid, func_name=keyed.func_name, params=params, created_at=time.time()
            ).pending(num)
        if future is None or call.status in FINAL_STATUSES:
            return call
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            return await fetch_call(app, num)
    finally:
        if future is not None:
            dispatcher.forget(num, future)


def who(request: web.Request) -> tuple[str | None, str | None]:
    """Who asks for an invoke (the API key's name), and its Idempotency-Key if any."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    return request.get(CALLER), None if key is None else check_key(key)


def check_params(body: bytes) -> bytes:
    body = body.strip() or b"{}"
    decode_json(body, Any, "params")
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
    catalog = request.app[CATALOG]
    name = request.match_info["funcName"]
    base = catalog.functions[name].limits if name in catalog.functions else Limits()
    async with read_upload(request) as upload:
        limits = limits_from(upload.fields, base, request.app[SETTINGS].default_timeout)
        function, _ = await catalog.put_function(
            name, request.match_info["runtime"], upload.filename, upload.staged, limits
        )
    return json_response(function_view(function))


async def legacy_invoke(request: web.Request) -> web.Response:
    body = await read_json(request, LegacyInvoke)
    params = check_params(bytes(body.params))
    call = await invoke(request.app, body.funcName, params, None, *who(request))
    return json_response(LegacyInvoked(call.call_num))


async def legacy_runtimes(request: web.Request) -> web.Response:
    return json_response(list(request.app[CATALOG].runtimes))


async def legacy_functions(request: web.Request) -> web.Response:
    return json_response(list(request.app[CATALOG].functions))


async def legacy_calls(request: web.Request) -> web.StreamResponse:
    """The whole call store as the original design shows it: ``{"c1": {...}, ...}``.

    Streamed: read from the db a page at a time, oldest first, each page written out
    before the next is asked for, so the api holds one page whatever the number of calls
    (and answers other requests between pages). Once the first bytes are out the status
    cannot change: if the db fails for good mid-way, the connection is cut, so a client
    sees a broken body rather than a shorter valid one.
    """
    db = request.app[DB]
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    after: int | None = None
    opening = b"{"

    def next_page() -> Awaitable[list[Call]]:
        return db.list_calls(after=after, limit=LIST_PAGE, oldest_first=True)

    try:
        while page := await retrying(next_page, DB_DEADLINE, "list calls"):
            # one dict of the page, its braces dropped: the members of the whole object
            members = _json.encode({f"c{c.call_num}": legacy_call(c) for c in page})[1:-1]
            await response.write(opening + members)
            opening, after = b",", page[-1].call_num
        await response.write(b"{}" if opening == b"{" else b"}")
        await response.write_eof()
    except Unavailable as exc:
        log.warning("api.stream_cut", path=request.path, error=exc.message)
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:  # the client left: nothing more to send
        pass
    return response


async def fetch_call(app: web.Application, num: int) -> Call:
    """A call as the db has it, or as its worker just reported it (the db may be a step
    behind: a worker reports a call dispatched once before writing its result)."""
    recent = app[DISPATCHER].recent.get(num)
    return recent if recent is not None else await app[DB].get_call(num)


async def legacy_call_get(request: web.Request) -> web.Response:
    call = await fetch_call(request.app, match_call_num(request))
    return json_response(legacy_call(call))


# ---- /v1


async def healthz(request: web.Request) -> web.Response:
    await request.app[DB].ping()
    keeper = request.app[SETTINGS].keeper_client_hosts or request.app[SETTINGS].keeper_hosts
    return json_response(Health("ok", len(request.app[DISPATCHER].nodes), keeper or None))


UI_DIR = Path(__file__).parent / "ui"
UI_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The dashboard's pages read the /v1 API of their own origin and nothing else: no inline
# script, no other origin, never framed (docs/OPERATIONS.md, "The dashboard").
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _ui_file(name: str) -> web.Response:
    path = UI_DIR / name
    kind = UI_TYPES.get(path.suffix)
    if kind is None or path.name != name or not path.is_file():
        raise NotFound(f"no file {name!r} in the dashboard")
    return web.Response(body=path.read_bytes(), content_type=kind, headers=UI_HEADERS)


async def ui_page(request: web.Request) -> web.Response:
    """The dashboard (static files; they hold no data, so need no key to load)."""
    return _ui_file("index.html")


async def ui_asset(request: web.Request) -> web.Response:
    return _ui_file(request.match_info["file"])


async def metrics_view(request: web.Request) -> web.Response:
    """The api's metrics in the Prometheus text format (services/api/metrics.py)."""
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def next_page(
    request: web.Request, items: list[Any], limit: int, key: str, cursor: Any
) -> str | None:
    """The URL of the page after a full one, which ended at ``cursor`` (the query
    parameter ``key`` of the next), else None: the same query otherwise."""
    if len(items) < limit:
        return None
    query = {k: v for k, v in request.query.items() if k not in ("before", "after")}
    query[key] = str(cursor)
    return str(request.rel_url.with_query(query))


def query_limit(request: web.Request) -> int:
    return query_int(request, "limit", 1, LIST_PAGE) or DEFAULT_PAGE


async def list_runtimes(request: web.Request) -> web.Response:
    """Runtimes in name order, a page at a time (``limit``, ``after``: a name)."""
    limit = query_limit(request)
    page = request.app[CATALOG].runtime_page(request.query.get("after"), limit)
    next_url = next_page(request, page, limit, "after", page[-1].name if page else "")
    return json_response(RuntimePage([runtime_view(r) for r in page], next_url))


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
    """Functions in name order, a page at a time (``limit``, ``after``: a name)."""
    limit = query_limit(request)
    page = request.app[CATALOG].function_page(request.query.get("after"), limit)
    next_url = next_page(request, page, limit, "after", page[-1].name if page else "")
    return json_response(FunctionPage([function_view(f) for f in page], next_url))


async def put_function(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = request.match_info["name"]
    existing = catalog.functions.get(name)
    async with read_upload(request) as upload:
        runtime = upload.fields.get("runtime")
        if runtime is None:
            if existing is None:
                raise BadRequest("missing form field 'runtime'")
            runtime = existing.runtime
        base = existing.limits if existing else Limits()
        limits = limits_from(upload.fields, base, request.app[SETTINGS].default_timeout)
        function, created = await catalog.put_function(
            name, runtime, upload.filename, upload.staged, limits
        )
    return json_response(function_view(function), 201 if created else 200)


async def get_function(request: web.Request) -> web.Response:
    """The function; with ``wait=S``, once its build is over (or after S seconds)."""
    catalog, name = request.app[CATALOG], request.match_info["name"]
    wait = query_float(request, "wait", None)
    if wait:
        return json_response(function_view(await catalog.wait_built(name, min(wait, 60.0))))
    return json_response(function_view(catalog.function(name)))


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


async def put_package(request: web.Request) -> web.Response:
    """Store a file by its sha256 (a node's build artifact), read within the package limits
    and checked against the sha it is stored under; 201, or 200 when it was stored already."""
    store = request.app[CATALOG].packages
    sha = request.match_info["sha256"]
    try:
        stored = await asyncio.to_thread(store.has, sha)
    except NotFound:
        raise BadRequest(f"{sha!r} is not a sha256 (64 lowercase hex digits)") from None
    if stored:
        return json_response(PackageStored(sha), 200)
    limit = request.app[SETTINGS].max_package_mb * 1024 * 1024
    staged = store.stage()
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            staged.write(chunk)
            if staged.size > limit:
                raise TooLarge(f"the file is larger than {limit >> 20} MiB")
        if staged.sha256 != sha:
            raise BadRequest(f"the body's sha256 is {staged.sha256}, not {sha}")
        await asyncio.to_thread(store.keep, staged)
    finally:
        staged.discard()
    return json_response(PackageStored(sha), 201)


async def invoke_function(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    blocking = query_bool(request, "blocking", True)
    settings = request.app[SETTINGS]
    wait = query_float(request, "timeout", settings.blocking_timeout) if blocking else None
    params = check_params(await request.read())
    wait = min(wait, settings.blocking_timeout) if wait else None
    call = await invoke(request.app, name, params, wait, *who(request))
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


CallNum = Annotated[int, msgspec.Meta(ge=1, le=MAX_CALL_NUM)]


class WaitIn(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Wait for calls to finish: any of them, or all, up to ``timeout`` seconds."""

    call_nums: Annotated[list[CallNum], msgspec.Meta(max_length=MAX_BATCH)]
    timeout: Annotated[float, msgspec.Meta(ge=0, le=24 * 3600)] = 0.0
    return_when: Literal["FIRST_COMPLETED", "ALL_COMPLETED"] = "ALL_COMPLETED"


async def create_calls(request: web.Request) -> web.Response:
    """Store a batch of calls (all or none: an unknown function stores nothing), then place
    them. With an Idempotency-Key, the batch that key stands for, made only once."""
    body = await read_json(request, BatchIn)
    if not 1 <= len(body.calls) <= MAX_BATCH:
        raise BadRequest(f"send between 1 and {MAX_BATCH} calls")
    caller, key = who(request)
    app = request.app
    now = time.time()
    new = [
        NewCall(
            uuid=uuid.uuid4().hex if key is None else call_uuid(caller, key, i),
            func_name=app[CATALOG].runnable(c.function).name,
            params=check_params(bytes(c.params)),
            created_at=now,
            caller=caller,
        )
        for i, c in enumerate(body.calls)
    ]
    if key is None:
        calls = await create_batch(app, new)
    else:
        db, keys, batch = app[DB], app[KEYS], call_uuid(caller, key)
        async with keys.taken(batch):
            uuids = [n.uuid for n in new]
            found = []
            if not keys.unseen(batch, key):
                found = await retrying(lambda: db.find_calls(uuids), DB_DEADLINE, "find calls")
            if not found:
                calls = await create_batch(app, new)
                keys.seen(batch)
            else:
                by_uuid = {c.uuid: c for c in found}
                if len(by_uuid) != len(new) or any(
                    (by_uuid[n.uuid].func_name, by_uuid[n.uuid].params) != (n.func_name, n.params)
                    for n in new
                    if n.uuid in by_uuid
                ):
                    raise mismatch(key)
                calls = [by_uuid[n.uuid] for n in new]
    return json_response(CallNums([c.call_num for c in calls]), 202)


async def create_batch(app: web.Application, new: list[NewCall]) -> list[Call]:
    """Admit, store and dispatch new calls, all or none (429 stores none)."""
    counts: dict[str, int] = {}
    for n in new:
        counts[n.func_name] = counts.get(n.func_name, 0) + 1
    dispatcher, db = app[DISPATCHER], app[DB]
    reserved: list[tuple[str, int]] = []
    try:
        for function, count in counts.items():
            dispatcher.reserve(function, count)
            reserved.append((function, count))
        calls = await retrying(lambda: db.create_calls(new), DB_DEADLINE, "create calls")
    except BaseException:
        for function, count in reserved:
            dispatcher.release(function, count)
        raise
    functions = app[CATALOG].functions
    for call in calls:
        known = functions.get(call.func_name)
        timeout = known.limits.timeout if known else app[SETTINGS].default_timeout
        dispatcher.dispatch(call, timeout)
    return calls


async def wait_calls(request: web.Request) -> web.Response:
    """The calls among ``callNums`` that are finished, once any (or all) are, or at timeout."""
    body = await read_json(request, WaitIn)
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
        Waited(
            [call_view(done[n]) for n in wanted if n in done],
            [n for n in wanted if n not in done],
        )
    )


def query_time(request: web.Request, name: str) -> float | None:
    """A query parameter that is a time: ISO 8601 (with a zone, or taken as UTC) or
    seconds since the epoch; None if absent."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(
                f"query parameter {name!r} must be an ISO 8601 time or seconds since the epoch"
            ) from None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIME:
        raise BadRequest(f"query parameter {name!r} is not a time fum can have stored")
    return seconds


async def list_calls(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    limit = query_limit(request)
    function = request.query.get("function")
    calls = await request.app[DB].list_calls(
        func_name=function,
        status=status,
        before=query_int(request, "before"),
        after=query_int(request, "after"),
        limit=limit,
        since=query_time(request, "since"),
        until=query_time(request, "until"),
    )
    next_url = next_page(request, calls, limit, "before", calls[-1].call_num if calls else 0)
    return json_response(CallPage([call_view(c) for c in calls], next_url))


async def get_call(request: web.Request) -> web.Response:
    return json_response(call_view(await fetch_call(request.app, match_call_num(request))))


async def get_call_logs(request: web.Request) -> web.Response:
    num = match_call_num(request)
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
    return json_response(CallLogs(num, logs))


async def list_nodes(request: web.Request) -> web.Response:
    nodes = [
        NodeView(
            node_id=n.node_id,
            capacity=n.capacity,
            preload=n.preload,
            driver=n.driver,
            busy=n.busy,
            queued=n.queued,
            in_flight=len(n.calls),
            idle=n.idle,
            generic=n.generic,
            sandboxes=n.sandboxes,
            durations=n.durations,
            starts=n.starts,
            registered_at=iso(n.registered_at),
            heard_at=iso(n.heard_at),
        )
        for n in sorted(request.app[DISPATCHER].nodes.values(), key=lambda n: n.node_id)
    ]
    return json_response(NodeList(nodes))
