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

from .callnums import CallNumbers
from .catalog import Catalog, PackageStore
from .dispatch import Dispatcher
from .routes import add_routes
from .settings import ApiSettings
from .views import CALL_NUMS, CATALOG, DB, DB_DEADLINE, DISPATCHER, SETTINGS, json_response

log = structlog.get_logger()


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


@web.middleware
async def errors_and_access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place exceptions become HTTP answers; one log line per request."""
    t0 = time.perf_counter()
    try:
        response = await handler(request)
    except Overloaded as exc:
        response = json_response(
            error_body(exc.code, exc.message),
            exc.http_status,
            {"Retry-After": str(request.app[SETTINGS].retry_after)},
        )
    except FumError as exc:
        response = json_response(error_body(exc.code, exc.message), exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_response(
            error_body(exc.reason.lower().replace(" ", "_"), exc.reason), exc.status
        )
    except Exception as exc:
        log.exception("http.error", path=request.path)
        response = json_response(error_body("internal", f"{type(exc).__name__}: {exc}"), 500)
    log.debug(
        "http.request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round((time.perf_counter() - t0) * 1000, 3),
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


async def recover_calls(db: DbClient, dispatcher: Dispatcher, catalog: Catalog) -> None:
    """Take back the calls a previous run of the api left unfinished."""
    found: dict[str, list[Call]] = {"PENDING": [], "RUNNING": []}
    for status, calls in found.items():
        before = None
        while page := await db.list_calls(status=status, before=before, limit=1000):
            calls.extend(page)
            before = page[-1].call_num
        calls.reverse()  # oldest first
    timeouts = {f.name: f.limits.timeout for f in catalog.functions.values()}
    dispatcher.recover(found["PENDING"], found["RUNNING"], timeouts)


async def stop_waiting(app: web.Application) -> None:
    """On shutdown, blocking clients get a clear 503 at once instead of a cut connection."""
    app[DISPATCHER].fail_waiters("the api is stopping; the call goes on, ask for it later")


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the db client, the node channel and the catalogue; stop them after."""
    settings = app[SETTINGS]
    ctx: zmq.Context = zmq.Context()
    keys = ClusterKeys.open(settings.keys_dir, serve=True)
    auth = authenticator(ctx, keys)  # before the node channel binds
    db = DbClient(ctx, settings.db_url, keys, timeout=5.0)
    # The dispatcher sends each registering worker the catalogue, which pushes through it.
    dispatcher = Dispatcher(
        settings, ctx, keys, lambda: catalog.snapshot(), lambda name: catalog.functions.get(name)
    )
    catalog = Catalog(db, PackageStore(Path(settings.data_dir) / "packages"), dispatcher)
    app[DB], app[DISPATCHER], app[CATALOG] = db, dispatcher, catalog
    app[CALL_NUMS] = CallNumbers(db, DB_DEADLINE)
    serving = None
    try:
        await wait_for_db(db)
        await catalog.load()
        await recover_calls(db, dispatcher, catalog)
        serving = asyncio.get_running_loop().create_task(dispatcher.serve())
        log.info("api.started", nodes=dispatcher.endpoint, policy=settings.invocation_policy)
        yield
    finally:
        if serving is not None:
            serving.cancel()
        dispatcher.close()
        await db.close()
        auth.stop()
        await close_context(ctx)


def init_app(settings: ApiSettings) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_access_log],
        client_max_size=(settings.max_package_mb + 1) * 1024 * 1024,
    )
    app[SETTINGS] = settings
    add_routes(app)
    app.cleanup_ctx.append(services_ctx)
    app.on_shutdown.append(stop_waiting)
    return app
