"""``python -m services.db``: the db service, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack

import structlog
import uvloop
import zmq

from services.common import metrics, profiling
from services.common.curve import ClusterKeys, authenticator
from services.common.logs import setup_logging
from services.common.metrics import register
from services.common.rpc import close_context, make_socket
from services.common.settings import load_settings
from services.common.tasks import Background

from . import metrics as db_metrics
from .retention import Retention
from .server import DbServer
from .settings import DbSettings
from .store import Store

log = structlog.get_logger()

# How long the last replies may take to leave once the server has stopped reading.
REPLY_LINGER_MS = 2000


async def run(settings: DbSettings) -> int:
    """Serve until a signal: the first drains and returns 0, a second forces and returns 1."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    async with AsyncExitStack() as stack:
        store = await Store.open(settings)
        stack.push_async_callback(store.close)
        ctx: zmq.Context = zmq.Context()
        stack.push_async_callback(close_context, ctx)
        keys = ClusterKeys.open(settings.keys_dir, serve=True)
        stack.callback(authenticator(ctx, keys).stop)
        sock = keys.server(make_socket(ctx, zmq.ROUTER))
        sock.bind(settings.db_bind)
        server = DbServer(sock, store, keep_checkpoints=settings.keep_checkpoints)
        stack.callback(server.close)
        background = Background()
        stack.push_async_callback(background.close)
        if settings.retention:
            background.spawn(Retention(store, settings).run())

        def on_signal(signum: signal.Signals) -> None:
            if not server.stopping:
                log.info("db.draining", signal=signum.name)
                server.stop()
            else:
                log.warning("db.forced_stop", signal=signum.name)
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
            stack.callback(loop.remove_signal_handler, signum)

        register(db_metrics.StatesCollector(settings.db_path))
        metrics.serve(settings.metrics_port, settings.metrics_host, "db")
        log.info("db.listening", bind=settings.db_bind, path=settings.db_path)
        try:
            await server.serve()
            await server.drain()
        except asyncio.CancelledError:
            if not server.stopping:
                raise
            log.warning("db.stopped_without_draining")
            # The batch in hand still ends (commit or rollback) on the store's thread (one
            # run on the loop's has ended already), with no replies: its clients time out
            # and retry (creates are idempotent by uuid).
            return 1
        server.close(REPLY_LINGER_MS)  # the last replies get a moment to leave
    log.info("db.stopped")
    return 0


def main() -> None:
    settings = load_settings(DbSettings)
    setup_logging("db", settings.log_level)
    sys.exit(profiling.run("db", lambda: uvloop.run(run(settings))))


if __name__ == "__main__":
    main()
