"""``python -m services.api``: the HTTP front door (port 3000 by default)."""

from __future__ import annotations

import uvloop
from aiohttp import web

from services.common import profiling
from services.common.logs import setup_logging
from services.common.settings import load_settings

from .app import init_app
from .settings import ApiSettings


def main() -> None:
    settings = load_settings(ApiSettings)
    setup_logging("api", settings.log_level)
    profiling.run(
        "api",
        lambda: web.run_app(
            init_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            print=None,
            access_log=None,
            loop=uvloop.new_event_loop(),
            shutdown_timeout=5,
        ),
    )


if __name__ == "__main__":
    main()
