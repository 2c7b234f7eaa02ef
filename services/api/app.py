"""``init_app(settings)``: the aiohttp application and everything it starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
import zmq
from aiohttp import web

from services.common.curve import ClusterKeys, authenticator
from services.common.db_client import DbClient
from services.common.errors import FumError, Overloaded, Unavailable
from services.common.models import Call
from services.common.rpc import close_context

from . import metrics
from .auth import ApiKeys
from .callnums import CallNumbers
from .catalog import Catalog, PackageStore
from .dispatch import Dispatcher
from .idempotency import EPOCH_HEADER, Keys
from .keeper_views import keeper_ctx
from .routes import ROUTES, add_routes
from .security import Door, cors_headers
from .settings import ApiSettings
from .views import (
    CALL_NUMS,
    CATALOG,
    DB,
    DB_DEADLINE,
    DISPATCHER,
    KEYS,
    SETTINGS,
    error_body,
    json_response,
)

log = structlog.get_logger()


# Codes of the errors aiohttp raises itself, the same as fum's own for the same status.
HTTP_CODES = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}


class StatusRecord:
    """Each (method, route template, status) the api answered, appended once to a file
    (``FUM_STATUS_RECORD``): what the tests check the OpenAPI document against. Short
    appends, so several apis may share one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: set[tuple[str, str, int]] = set()

    def add(self, method: str, template: str, status: int) -> None:
        if (method, template, status) in self.seen:
            return
        self.seen.add((method, template, status))
        with open(self.path, "a") as out:
            out.write(f"{method} {template} {status}\n")


STATUS_RECORD = web.AppKey("status_record", StatusRecord)


@web.middleware
async def errors_and_access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place exceptions become HTTP answers; one log line per request."""
    t0 = time.perf_counter()
    try:
        response = await handler(request)
    except Overloaded as exc:
        metrics.REJECTED.inc()
        response = json_response(
            error_body(exc.code, exc.message),
            exc.http_status,
            {"Retry-After": str(request.app[SETTINGS].retry_after)},
        )
    except FumError as exc:
        response = json_response(error_body(exc.code, exc.message), exc.http_status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status) or exc.reason.lower().replace(" ", "_")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = json_response(error_body(code, exc.reason), exc.status, headers)
    except Exception as exc:
        log.exception("http.error", path=request.path)
        response = json_response(error_body("internal", f"{type(exc).__name__}: {exc}"), 500)
    seconds = time.perf_counter() - t0
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"  # never a raw path
    metrics.HTTP_REQUESTS.labels(request.method, template, str(response.status)).inc()
    metrics.HTTP_SECONDS.labels(request.method, template).observe(seconds)
    record = request.app.get(STATUS_RECORD)
    if record is not None:
        record.add(request.method, template, response.status)
    log.debug(
        "http.request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round(seconds * 1000, 3),
    )
    return response


async def wait_for_db(db: DbClient) -> None:
    """The db may start after the api (compose, a reboot): wait for it, saying so."""
    while True:
        try:
            await db.ping(deadline=2.0)
            return
        except Unavailable:
            log.warning("api.waiting_for_db", endpoint=db.endpoint)


async def calls_of(db: DbClient, status: str) -> AsyncIterator[list[Call]]:
    """Every call of a status, a page at a time, newest first."""
    before = None
    while page := await db.list_calls(status=status, before=before, limit=1000):
        yield page
        before = page[-1].call_num


async def recover_calls(db: DbClient, dispatcher: Dispatcher, catalog: Catalog) -> None:
    """Take back the calls a previous run of the api left unfinished."""
    found: dict[str, list[Call]] = {"PENDING": [], "RUNNING": []}
    for status, calls in found.items():
        async for page in calls_of(db, status):
            calls.extend(page)
        calls.reverse()  # oldest first
    timeouts = {f.name: f.limits.timeout for f in catalog.functions.values()}
    dispatcher.recover(found["PENDING"], found["RUNNING"], timeouts)


async def sweep_pending(db: DbClient, dispatcher: Dispatcher, interval: float) -> None:
    """Place the PENDING calls no one placed: made in the db on a worker's request (a
    workflow's next steps, a trigger's action) by a worker that died before it handed
    them to the api (``PlaceCalls``). A call younger than ``interval`` is left to its
    maker; so a lost hand-off delays a call by at most about two intervals."""
    while True:
        await asyncio.sleep(interval)
        cutoff = time.time() - interval
        try:
            async for page in calls_of(db, "PENDING"):
                old = [c for c in page if c.created_at < cutoff]
                if dispatcher.place_stored(old, dispatcher.timeout_of):
                    log.warning("api.swept", calls=len(old))
        except Unavailable as exc:
            log.warning("api.sweep_failed", error=exc.message)


async def collect_packages(catalog: Catalog, grace: float) -> None:
    """Remove, every half ``grace``, the packages and artifacts no function has."""
    while True:
        await asyncio.sleep(max(grace / 2, 0.5))
        try:
            await catalog.collect_packages(grace)
        except OSError as exc:
            log.warning("api.packages_not_collected", error=str(exc))


async def stop_waiting(app: web.Application) -> None:
    """On shutdown, blocking clients get a clear 503 at once instead of a cut connection."""
    app[DISPATCHER].fail_waiters("the api is stopping; the call goes on, ask for it later")


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the db client, the node channel and the catalogue; stop them after."""
    settings = app[SETTINGS]
    ctx: zmq.Context = zmq.Context()
    keys = ClusterKeys.open(settings.keys_dir, serve=True)
    auth = authenticator(ctx, keys)  # before the node channel binds
    # The dispatcher sends each registering worker the catalogue, which pushes through it.
    dispatcher = Dispatcher(
        settings, ctx, keys, lambda: catalog.snapshot(), lambda name: catalog.functions.get(name)
    )
    db = DbClient(
        ctx,
        settings.db_url,
        keys,
        timeout=5.0,
        on_placed=lambda calls: dispatcher.place_stored_calls(calls),
    )
    packages = PackageStore(Path(settings.data_dir) / "packages", settings)
    catalog = Catalog(db, packages, dispatcher)
    app[DB], app[DISPATCHER], app[CATALOG] = db, dispatcher, catalog
    app[CALL_NUMS] = CallNumbers(db, DB_DEADLINE)
    app[KEYS] = Keys()
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_for_db(db)
        await catalog.load()
        await recover_calls(db, dispatcher, catalog)
        dispatcher.open()  # workers register from now on, and get the whole catalogue
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(dispatcher.serve()))
        tasks.append(loop.create_task(sweep_pending(db, dispatcher, settings.sweep_interval)))
        tasks.append(loop.create_task(collect_packages(catalog, settings.package_grace)))
        log.info("api.started", nodes=dispatcher.endpoint, policy=settings.invocation_policy)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await catalog.close()
        dispatcher.close()
        await db.close()
        auth.stop()
        await close_context(ctx)


async def epoch_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer says this api's epoch, which clients may begin their idempotency
    keys with (services/api/idempotency.py)."""
    keys = request.app.get(KEYS)
    if keys is not None:
        response.headers[EPOCH_HEADER] = keys.epoch


def init_app(settings: ApiSettings) -> web.Application:
    keys = ApiKeys(settings.api_keys)
    if keys.open:
        log.warning(
            "api.open",
            note="no API keys (FUM_API_KEYS): anyone who reaches this port can run code",
        )
    door = Door(settings, keys, ROUTES)
    app = web.Application(
        middlewares=[errors_and_access_log, door.middleware],
        # JSON bodies; uploads stream past this bound, within their own (read_upload)
        client_max_size=settings.max_json_mb * 1024 * 1024,
    )
    app[SETTINGS] = settings
    if settings.status_record:
        app[STATUS_RECORD] = StatusRecord(settings.status_record)
    add_routes(app)
    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(keeper_ctx)
    app.on_shutdown.append(stop_waiting)
    app.on_response_prepare.append(cors_headers)
    app.on_response_prepare.append(epoch_header)
    return app
