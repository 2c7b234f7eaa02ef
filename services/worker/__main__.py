"""``python -m services.worker``: one per node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import msgspec
import uvloop

from services.common import profiling
from services.common.logs import setup_logging
from services.common.settings import load_settings

from .settings import WorkerSettings, node_number
from .worker import Worker


async def serve(settings: WorkerSettings, base_env: dict[str, str]) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await Worker(settings, base_env).serve()


def main() -> None:
    settings = load_settings(WorkerSettings)
    if settings.node_id < 0:
        name = settings.node_name or socket.gethostname()
        settings = msgspec.structs.replace(settings, node_id=node_number(name))
    setup_logging(f"worker-{settings.node_id}", settings.log_level)
    # Miniworkers inherit the node's environment (PATH, proxies), not just fum's settings.
    profiling.run("worker", lambda: uvloop.run(serve(settings, dict(os.environ))))


if __name__ == "__main__":
    main()
