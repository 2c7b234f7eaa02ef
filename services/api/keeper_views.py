"""``GET /v1/keeper/nodes``: the keeper's tree, read-only, for the dashboard.

The api reads the tree as any client does, over ZooKeeper's own protocol (kazoo), from
``FUM_KEEPER_HOSTS``: so it reads a real ZooKeeper ensemble the same way, and the keeper
needs no channel of its own. The client connects on the first request (an api starts
whether or not the keeper is up), reconnects by itself, and only ever reads: exists,
getData, getChildren. It has no credentials: a znode whose ACL does not let anyone read
shows its stat only.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from aiohttp import web
from kazoo.client import KazooClient
from kazoo.exceptions import BadArgumentsError, KazooException, NoAuthError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat

from services.common.errors import BadRequest, NotFound, Unavailable

from .views import SETTINGS, json_response

CONNECT_TIMEOUT = 5.0  # seconds the first request waits for a session with the keeper
READ_TIMEOUT = 5.0  # seconds a read waits (a keeper that went away: kazoo reconnects)
PREVIEW = 1024  # bytes of a znode's data shown
MAX_CHILDREN = 1000  # children named, in order (stat.numChildren says how many there are)
MAX_PATH = 4096


class StatView(msgspec.Struct, rename="camel"):
    """ZooKeeper's Stat of a znode; times ISO 8601, the owner session in hex (as zkCli)."""

    version: int  # of its data
    cversion: int  # of its children
    aversion: int  # of its ACL
    ephemeral_owner: str | None  # the session that owns it, if it is ephemeral
    data_length: int
    num_children: int
    czxid: int
    mzxid: int
    pzxid: int
    ctime: str
    mtime: str


class Znode(msgspec.Struct, rename="camel"):
    """A znode: ``data`` the first bytes of its data, as text when they are UTF-8, else
    base64 (``encoding``); ``readable`` false when its ACL lets no one without
    credentials read it (no data, no children then)."""

    path: str
    stat: StatView
    readable: bool
    data: str | None
    encoding: Literal["utf-8", "base64"]
    truncated: bool  # the data is longer than the preview
    children: list[str]  # names, sorted; the first MAX_CHILDREN


def check_path(path: str) -> str:
    """ZooKeeper's rules for a path: absolute, no empty, ``.`` or ``..`` segment, no
    trailing slash but the root's, no control character."""
    if not path.startswith("/"):
        raise BadRequest(f"a znode path starts with '/', not {path[:50]!r}")
    if len(path) > MAX_PATH:
        raise BadRequest(f"a znode path is at most {MAX_PATH} characters")
    if path != "/":
        parts = path[1:].split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise BadRequest(f"{path[:200]!r} has an empty, '.' or '..' segment")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xF8FF for c in path):
        raise BadRequest("a znode path has no control or private-use characters")
    return path


def _ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _stat(s: ZnodeStat) -> StatView:
    return StatView(
        version=s.version,
        cversion=s.cversion,
        aversion=s.aversion,
        ephemeral_owner=f"{s.ephemeralOwner:#x}" if s.ephemeralOwner else None,
        data_length=s.dataLength,
        num_children=s.numChildren,
        czxid=s.czxid,
        mzxid=s.mzxid,
        pzxid=s.pzxid,
        ctime=_ms(s.ctime),
        mtime=_ms(s.mtime),
    )


def preview(data: bytes) -> tuple[str, Literal["utf-8", "base64"], bool]:
    """The first PREVIEW bytes as text (a character cut at the end left out), or base64."""
    head, truncated = data[:PREVIEW], len(data) > PREVIEW
    for cut in range(4 if truncated else 1):
        try:
            return head[: len(head) - cut].decode(), "utf-8", truncated
        except UnicodeDecodeError:
            continue
    return base64.b64encode(head).decode(), "base64", truncated


class KeeperReader:
    """One kazoo client of the api, made on first use."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self.client: KazooClient | None = None
        self.lock = asyncio.Lock()

    async def _client(self) -> KazooClient:
        async with self.lock:
            if self.client is None:
                client = KazooClient(hosts=self.hosts, timeout=10.0)
                try:
                    await asyncio.to_thread(client.start, CONNECT_TIMEOUT)
                except KazooTimeoutError:
                    await asyncio.to_thread(_stop, client)
                    raise Unavailable(f"the keeper ({self.hosts}) does not answer") from None
                self.client = client
            return self.client

    async def node(self, path: str) -> Znode:
        client = await self._client()
        try:
            return await asyncio.to_thread(_read, client, path)
        except NoNodeError:
            raise NotFound(f"no znode {path!r}") from None
        except BadArgumentsError:
            raise BadRequest(f"the keeper takes no path {path!r}") from None
        except (KazooTimeoutError, KazooException) as exc:
            raise Unavailable(
                f"the keeper ({self.hosts}) does not answer: {type(exc).__name__}"
            ) from None

    async def close(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(_stop, self.client)
            self.client = None


def _stop(client: KazooClient) -> None:
    client.stop()
    client.close()


def _read(client: KazooClient, path: str) -> Znode:
    """On kazoo's side (a thread): the node's stat, then its data and children."""

    def wait(result: Any) -> Any:
        return result.get(timeout=READ_TIMEOUT)

    stat = wait(client.exists_async(path))
    if stat is None:
        raise NoNodeError()
    try:
        data, stat = wait(client.get_async(path))
        children = sorted(wait(client.get_children_async(path)))[:MAX_CHILDREN]
    except NoAuthError:
        return Znode(path, _stat(stat), False, None, "utf-8", False, [])
    text, encoding, truncated = preview(data or b"")
    return Znode(path, _stat(stat), True, text, encoding, truncated, children)


KEEPER = web.AppKey("keeper", KeeperReader)


async def keeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """The api's keeper client, closed on shutdown (``cleanup_ctx``)."""
    hosts = app[SETTINGS].keeper_hosts
    if hosts:
        app[KEEPER] = KeeperReader(hosts)
    yield
    if hosts:
        await app[KEEPER].close()


async def get_keeper_node(request: web.Request) -> web.Response:
    """A znode of the keeper's tree: its stat, a preview of its data, its children."""
    reader = request.app.get(KEEPER)
    if reader is None:
        raise Unavailable("this api has no keeper (FUM_KEEPER_HOSTS)")
    path = check_path(request.query.get("path", "/"))
    return json_response(await reader.node(path))
