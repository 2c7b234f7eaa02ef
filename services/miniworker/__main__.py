"""``python -m services.miniworker``: started by a worker, one per sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import uvloop

from services.common import profiling
from services.common.logs import setup_logging
from services.common.settings import load_settings

from .miniworker import Miniworker, open_driver
from .settings import PASSTHROUGH, MiniworkerSettings


async def serve(settings: MiniworkerSettings, passthrough: dict[str, str]) -> None:
    driver = await open_driver(settings, passthrough)
    miniworker = Miniworker(settings, driver)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await miniworker.serve()
    finally:
        await driver.close()


def main() -> None:
    settings = load_settings(MiniworkerSettings)
    setup_logging(f"miniworker-{settings.mw_id}", settings.log_level)
    passthrough = {name: os.environ[name] for name in PASSTHROUGH if name in os.environ}
    profiling.run("miniworker", lambda: uvloop.run(serve(settings, passthrough)))


if __name__ == "__main__":
    main()
