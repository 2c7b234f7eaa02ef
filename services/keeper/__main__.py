"""``python -m services.keeper``: the keeper, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack

import structlog
import uvloop

from services.common import metrics, profiling
from services.common.logs import setup_logging
from services.common.settings import load_settings

from .connection import Connection
from .server import KeeperServer
from .settings import KeeperSettings
from .store import Store

log = structlog.get_logger()

# How long the last commit and its replies may take once the keeper stops accepting.
DRAIN_SECONDS = 5.0


async def run(settings: KeeperSettings) -> int:
    """Serve until a signal: the first drains and returns 0, a second forces and returns 1."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    forced = False
    async with AsyncExitStack() as stack:
        store = Store(settings)
        loaded = await store.open()
        stack.push_async_callback(store.close)
        server = KeeperServer(settings, store, loaded)
        hosts = [host.strip() for host in settings.keeper_host.split(",") if host.strip()]
        listener = await loop.create_server(lambda: Connection(server), hosts, settings.keeper_port)
        expiry = loop.create_task(server.expire_sessions())

        def on_signal(signum: signal.Signals) -> None:
            nonlocal forced
            if stop.is_set():
                log.warning("keeper.forced_stop", signal=signum.name)
                forced = True
                server.stopped.set()
            else:
                log.info("keeper.draining", signal=signum.name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
            stack.callback(loop.remove_signal_handler, signum)
        metrics.serve(settings.metrics_port, settings.metrics_host, "keeper")
        host, port = listener.sockets[0].getsockname()[:2]
        log.info(
            "keeper.listening",
            host=host,
            port=port,
            path=settings.keeper_path,
            zxid=server.zxid,
            nodes=len(server.tree.nodes),
            sessions=len(server.sessions.by_id),
        )
        failed = asyncio.ensure_future(server.stopped.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        listener.close()
        expiry.cancel()
        if server.failure is None and not forced:
            await server.drain(DRAIN_SECONDS)
        failed.cancel()
        stopping.cancel()
    if server.failure is not None:
        log.error("keeper.stopped_on_store_failure", error=str(server.failure))
        return 1
    log.info("keeper.stopped")
    return 1 if forced else 0


def main() -> None:
    settings = load_settings(KeeperSettings)
    setup_logging("keeper", settings.log_level)
    sys.exit(profiling.run("keeper", lambda: uvloop.run(run(settings))))


if __name__ == "__main__":
    main()
