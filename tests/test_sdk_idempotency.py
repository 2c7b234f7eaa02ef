"""The SDK's invokes carry an ``Idempotency-Key`` and are sent again only with it: a
connection that breaks after the api took a POST never makes a second call.

Between the SDK and a real cluster sits a small asyncio proxy that forwards every
request to the api and, for the invokes it is told to break, lets the api answer, then
closes the client's connection without relaying the answer (and may refuse new
connections for a moment, as an api that went away would).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from fum_cli.local import LocalCluster
from fum_client import AsyncClient, Client, FunctionExecutor

from .support import Api


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (the api's and the SDK's framing)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def header(message: bytes, name: str) -> str | None:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


class BreakingProxy:
    """Forwards to ``upstream``; breaks the first ``breaks`` POSTs whose path contains
    ``target`` on a connection that already carried a request (``reused_only``) or on
    any; after a break, refuses connections for ``refuse_s`` seconds."""

    def __init__(
        self, upstream: str, target: str, reused_only: bool = True, refuse_s: float = 0.0
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.target = target.encode()
        self.reused_only = reused_only
        self.refuse_s = refuse_s
        self.breaks = 1
        self.posts: list[bytes] = []  # every targeted request, as it came
        self._server: asyncio.Server | None = None
        self._refusing: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def stop(self) -> None:
        if self._refusing is not None:
            self._refusing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refusing
        await self._close()

    async def _refuse_for_a_while(self) -> None:
        await self._close()  # connections to the port are refused now
        await asyncio.sleep(self.refuse_s)
        await self.start()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        served = 0
        try:
            while (request := await _read_message(reader)) is not None:
                targeted = request.startswith(b"POST ") and self.target in request.split(b"\r\n")[0]
                if targeted:
                    self.posts.append(request)
                up_writer.write(request)
                answer = await _read_message(up_reader)
                assert answer is not None, "the api closed the connection"
                if targeted and self.breaks and (served or not self.reused_only):
                    self.breaks -= 1  # the api has made the call: the client never hears
                    if self.refuse_s:
                        loop = asyncio.get_running_loop()
                        self._refusing = loop.create_task(self._refuse_for_a_while())
                    return
                writer.write(answer)
                await writer.drain()
                served += 1
        finally:
            writer.close()
            up_writer.close()


@pytest.fixture(scope="module")
def driver() -> str:
    """The SDK's side is under test here: the process driver's cluster is enough."""
    return "process"


async def deployed(api: Api, kind: str) -> str:
    await api.runtime("pyh")
    return await api.handler_function(kind, "pyh")


@contextlib.asynccontextmanager
async def proxy(
    cluster: LocalCluster, target: str, **options: object
) -> AsyncIterator[BreakingProxy]:
    breaking = BreakingProxy(cluster.url, target, **options)  # type: ignore[arg-type]
    await breaking.start()
    try:
        yield breaking
    finally:
        await breaking.stop()


async def calls_of(api: Api, name: str) -> list[int]:
    status, body = await api.request("GET", "/v1/calls", params={"function": name})
    assert status == 200, body
    return [call["callNum"] for call in body["items"]]


def assert_sent_twice_with_one_key(posts: list[bytes]) -> str:
    keys = [header(post, "Idempotency-Key") for post in posts]
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1], keys
    return keys[0]


async def test_sync_invoke_broken_after_the_api_took_it_is_one_call(
    api: Api, cluster: LocalCluster
) -> None:
    name = await deployed(api, "echo")
    async with proxy(cluster, "/invoke") as breaking:

        def invoke() -> int:
            with Client(breaking.url) as client:
                client.list_functions()  # the connection is kept alive from here
                call = client.invoke(name, {"once": 1})
                assert call.status == "DONE" and call.result == {"once": 1}
                return call.call_num

        num = await asyncio.to_thread(invoke)
    key = assert_sent_twice_with_one_key(breaking.posts)
    assert await calls_of(api, name) == [num]
    # the api's epoch came with the first answer: the key begins with it (no db read)
    async with api.session.get("/healthz") as response:
        assert key.startswith(response.headers["Fum-Epoch"] + "."), key


async def test_async_invoke_broken_after_the_api_took_it_is_one_call(
    api: Api, cluster: LocalCluster
) -> None:
    name = await deployed(api, "echo")
    async with proxy(cluster, "/invoke") as breaking, AsyncClient(breaking.url) as client:
        await client.list_functions()
        call = await client.invoke(name, {"once": 2})
        assert call.status == "DONE" and call.result == {"once": 2}
    assert_sent_twice_with_one_key(breaking.posts)
    assert await calls_of(api, name) == [call.call_num]


async def test_executor_resubmits_after_a_refused_reconnect_with_the_same_key(
    api: Api, cluster: LocalCluster
) -> None:
    """The batch's POST is taken, its connection breaks, the reconnect is refused (the
    api looks gone) and the executor submits again once it answers: with the same key,
    so the calls are made once."""
    name = await deployed(api, "echo")
    async with proxy(cluster, "/v1/calls", reused_only=False, refuse_s=0.5) as breaking:

        def run_map() -> list[object]:
            with FunctionExecutor(breaking.url, lone_call_wait=0) as executor:
                futures = executor.map(name, [{"i": i} for i in range(5)])
                return executor.get_result(futures, timeout=60)  # type: ignore[no-any-return]

        results = await asyncio.to_thread(run_map)
    assert results == [{"i": i} for i in range(5)]
    posts = [post for post in breaking.posts if post.startswith(b"POST /v1/calls ")]
    assert_sent_twice_with_one_key(posts)
    assert len(await calls_of(api, name)) == 5


async def test_a_repeated_key_is_the_same_call(api: Api, cluster: LocalCluster) -> None:
    name = await deployed(api, "echo")

    def twice() -> tuple[int, int, int]:
        with Client(cluster.url) as client:
            key = client.new_idempotency_key()
            first = client.invoke(name, {"k": 1}, idempotency_key=key)
            second = client.invoke(name, {"k": 1}, idempotency_key=key)
            other = client.invoke(name, {"k": 1})  # a new key: a new call
            return first.call_num, second.call_num, other.call_num

    first, second, other = await asyncio.to_thread(twice)
    assert first == second != other
    async with AsyncClient(cluster.url) as client:
        key = client.new_idempotency_key()
        nums = [(await client.invoke(name, {"k": 2}, idempotency_key=key)).call_num for _ in "ab"]
        batch = [(name, {"k": 3})] * 3
        made = [await client.create_calls(batch) for _ in "ab"]  # each with its own key
    assert nums[0] == nums[1]
    assert made[0] != made[1]
    made_here = sorted({first, other, nums[0], *made[0], *made[1]})
    # a listing reads the db's last commit: a blocking call's worker may still be writing it
    deadline = time.monotonic() + 10
    while (listed := sorted(await calls_of(api, name))) != made_here:
        assert time.monotonic() < deadline, (listed, made_here)
        await asyncio.sleep(0.05)


async def test_a_blocking_invoke_is_waited_for_longer_than_the_api_waits(
    api: Api, cluster: LocalCluster
) -> None:
    """A blocking invoke's request timeout is the client's plus the api's wait (60 s when
    none is given): a call longer than the client's timeout is still answered, not taken
    for a lost connection (which would have made the SDK send it again)."""
    name = await deployed(api, "sleepy")

    def invoke() -> object:
        with Client(cluster.url, timeout=0.5) as client:
            return client.invoke(name, {"s": 1.5})

    call = await asyncio.to_thread(invoke)
    assert getattr(call, "status", None) == "DONE", call
