"""The api's door: which pages, hosts and keys may send which bodies (docs/SECURITY.md).

Every request passes, in order:

1. **Host** (DNS rebinding, as Jupyter checks it): a name in the ``Host`` header must be
   allowed (``FUM_ALLOWED_HOSTS``; by default only ``localhost`` when the api listens
   on loopback, any when it listens on a network); an IP address always is, since a
   rebinding attack needs a name of the attacker's.
2. **Origin** (cross-site requests: a browser sends any page's simple POST without
   asking): a request with an ``Origin`` header is let in only from its own origin or
   an allowed one (``FUM_ALLOWED_ORIGINS``); an allowed origin's CORS preflight is
   answered here, before any key is asked for.
3. **API key**, unless the route is public (``/healthz``, ``/v1/openapi.json``, the
   dashboard's static files under ``/ui``, which hold no data).
4. **Content type**: a route that takes JSON takes only ``application/json`` (or
   ``+json``) bodies, an upload route only ``multipart/form-data``, a file route
   (a build's artifact) only ``application/octet-stream``: 415 otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from services.common.errors import Forbidden, UnsupportedMediaType

from .auth import ApiKeys
from .settings import ApiSettings

if TYPE_CHECKING:
    from .routes import Route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALLER = "caller"  # request key: the name of the API key that sent it (None: open api)
CORS_ORIGIN = "cors_origin"  # request key: the allowed foreign origin to answer
PUBLIC = frozenset({"healthz", "openapi_view", "ui_page", "ui_asset"})
# Bodies of "archive" routes (a workflow app): none is one a browser sends cross-origin
# without a preflight.
ARCHIVE_TYPES = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-tar",
        "application/octet-stream",
    }
)
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_EXPOSE = "Location, Retry-After, WWW-Authenticate"


def _names(setting: str) -> frozenset[str]:
    return frozenset(n.strip().lower() for n in setting.split(",") if n.strip())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _hostname(netloc: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, without its port."""
    return (urlsplit(f"//{netloc}").hostname or "").lower()


class Door:
    """The checks of one api, from its settings."""

    def __init__(self, settings: ApiSettings, keys: ApiKeys, routes: tuple[Route, ...]) -> None:
        self.keys = keys
        loopback = settings.http_host in ("127.0.0.1", "::1", "localhost")
        hosts = settings.allowed_hosts or ("localhost" if loopback else "*")
        self.hosts = _names(hosts)
        self.origins = frozenset(o.rstrip("/") for o in _names(settings.allowed_origins))
        self.routes: dict[str, Route] = {route.handler.__name__: route for route in routes}

    def check_host(self, request: web.Request) -> None:
        host = _hostname(request.host)
        if "*" in self.hosts or _is_ip(host) or host in self.hosts:
            return
        raise Forbidden(
            f"host {host!r} is not allowed (FUM_ALLOWED_HOSTS): a page may be reaching "
            "the api through a name of its own"
        )

    def foreign_origin(self, request: web.Request) -> str | None:
        """The request's foreign origin, if it has one and it is allowed; ``Forbidden``
        if it is not; None for a request of the api's own origin or with none."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower():
            return None  # the same origin: the api's own pages
        if "*" in self.origins or origin.rstrip("/").lower() in self.origins:
            return origin
        raise Forbidden(f"origin {origin!r} is not allowed (FUM_ALLOWED_ORIGINS)")

    def check_body(self, request: web.Request, route: Route) -> None:
        kind = request.content_type
        if route.body == "multipart":
            if kind != "multipart/form-data":
                raise UnsupportedMediaType("send the package as multipart/form-data")
        elif route.body == "archive":
            if kind not in ARCHIVE_TYPES:
                shown = ", ".join(sorted(ARCHIVE_TYPES))
                raise UnsupportedMediaType(f"send the archive as one of {shown}, not {kind!r}")
        elif route.body == "binary":
            if kind != "application/octet-stream":
                raise UnsupportedMediaType("send the file as application/octet-stream")
        elif route.body is None or not request.body_exists:
            return
        elif kind != "application/json" and not (
            kind.startswith("application/") and kind.endswith("+json")
        ):
            raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {kind!r}")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.check_host(request)
        origin = self.foreign_origin(request)
        request[CORS_ORIGIN] = origin
        if (
            request.method == "OPTIONS"
            and origin
            and "Access-Control-Request-Method" in request.headers
        ):
            return preflight(request)
        name = request.match_info.route.name
        if name not in PUBLIC:
            request[CALLER] = self.keys.caller(request.headers.get("Authorization"))
        route = self.routes.get(name or "")
        if route is not None:
            self.check_body(request, route)
        return await handler(request)


def preflight(request: web.Request) -> web.Response:
    """The answer to an allowed origin's CORS preflight: the path's methods (aiohttp found
    no OPTIONS route, and says which methods it has)."""
    missing = request.match_info.http_exception
    if not isinstance(missing, web.HTTPMethodNotAllowed):
        raise web.HTTPNotFound()
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": request[CORS_ORIGIN],
            "Access-Control-Allow-Methods": ", ".join(sorted(missing.allowed_methods)),
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an allowed foreign origin may read every answer, errors too."""
    origin = request.get(CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
        response.headers["Vary"] = "Origin"
