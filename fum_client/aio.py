"""``AsyncClient``: the whole v1 API for asyncio (aiohttp), method for method as ``Client``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import aiohttp

from . import _api
from ._http import UPLOAD_CHUNK, Progress, default_headers
from .config import Settings, resolve
from .errors import ApiUnreachable, WaitTimeout, api_error
from .keeper import configured_hosts, start_keeper
from .models import App, Call, CallPage, Function, Health, Node, Runtime, Session, WaitResult
from .packaging import load_package

if TYPE_CHECKING:
    from kazoo.client import KazooClient

T = TypeVar("T")


class AsyncClient:
    """A client of one fum api for asyncio; use ``async with AsyncClient() as client``.

    Address, key and errors as ``Client``. One aiohttp session (opened on first use)
    carries every request; ``limit`` caps its concurrent connections.
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        timeout: float = 30.0,
        limit: int = 100,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or resolve(api_url, api_key, profile)
        self.api_url = self.settings.api_url
        self.timeout = timeout
        self._limit = limit
        self._headers = default_headers(self.settings)
        self._session: aiohttp.ClientSession | None = None
        self.epoch: str | None = None  # the api's, from its last answer (Fum-Epoch)

    def __repr__(self) -> str:
        return f"AsyncClient({self.api_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit=self._limit)
            )
        return self._session

    async def _send(self, req: _api.Req[T], progress: Progress | None = None) -> T:
        url = self.api_url + req.path
        if req.query:
            url += "?" + urlencode(req.query)
        headers = {"Content-Type": req.content_type} if req.content_type else {}
        if req.idempotency_key is not None:
            headers[_api.IDEMPOTENCY_HEADER] = req.idempotency_key
        wait = self.timeout + (req.timeout or 0.0)
        session = self._open()
        for attempt in (1, 2):
            data: Any = req.body
            if req.body is not None and progress is not None:
                data = _chunks(req.body, progress)
            try:
                async with session.request(
                    req.method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=wait),
                ) as response:
                    body = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    epoch = _api.epoch_of(response.headers.get(_api.EPOCH_HEADER))
                    self.epoch = epoch or self.epoch
                break
            except aiohttp.ServerDisconnectedError:
                # The api may have taken the request: only a request that may be sent
                # twice (by its method, or by its Idempotency-Key) goes again.
                if attempt == 1 and req.resendable:
                    continue  # a kept-alive connection the api had closed: once more
                raise ApiUnreachable(
                    self.api_url, "the api closed the connection without answering"
                ) from None
            except aiohttp.ClientConnectorError as exc:
                reason = exc.strerror or str(exc.os_error) or "cannot connect"
                if isinstance(exc.os_error, ConnectionRefusedError):
                    reason = "connection refused"
                raise ApiUnreachable(self.api_url, reason, maybe_sent=attempt > 1) from None
            except TimeoutError:
                raise ApiUnreachable(self.api_url, f"no answer within {wait:g}s") from None
            except aiohttp.ClientError as exc:
                raise ApiUnreachable(self.api_url, str(exc) or type(exc).__name__) from None
        if status >= 400:
            raise api_error(status, body, req.what, retry_after)
        return req.read(status, body)

    # ---- cluster

    async def health(self) -> Health:
        return await self._send(_api.health())

    async def keeper(self, hosts: str | None = None, timeout: float = 15.0) -> KazooClient:
        """A started kazoo client of the cluster's keeper (see ``Client.keeper``); kazoo
        is thread-based: call it from ``asyncio.to_thread`` in async code."""
        hosts = configured_hosts(hosts) or (await self.health()).keeper
        return await asyncio.to_thread(start_keeper, hosts, self.api_url, timeout)

    async def openapi(self) -> dict[str, Any]:
        document: dict[str, Any] = await self._send(_api.openapi())
        return document

    async def list_nodes(self) -> list[Node]:
        return await self._send(_api.list_nodes())

    # ---- runtimes

    async def list_runtimes(self) -> list[Runtime]:
        """Every runtime, in name order (page after page)."""
        items: list[Runtime] = []
        while True:
            page = await self._send(_api.list_runtimes(items[-1].name if items else None))
            items += page.items
            if page.next is None or not page.items:
                return items

    async def get_runtime(self, name: str) -> Runtime:
        return await self._send(_api.get_runtime(name))

    async def put_runtime(
        self, name: str, image: str, run: str, *, path: str = "/ws", dependencies: str = ""
    ) -> Runtime:
        return await self._send(_api.put_runtime(name, image, run, path, dependencies))

    async def delete_runtime(self, name: str) -> None:
        await self._send(_api.delete_runtime(name))

    # ---- functions

    async def list_functions(self) -> list[Function]:
        """Every function, in name order (page after page)."""
        items: list[Function] = []
        while True:
            page = await self._send(_api.list_functions(items[-1].name if items else None))
            items += page.items
            if page.next is None or not page.items:
                return items

    async def get_function(self, name: str, wait: float | None = None) -> Function:
        """The function; with ``wait`` (s, at most 60), once its build is over."""
        return await self._send(_api.get_function(name, wait))

    async def deploy_function(
        self,
        name: str,
        package: bytes | str | os.PathLike[str],
        *,
        runtime: str | None = None,
        filename: str | None = None,
        timeout: float | None = None,
        memory: int | None = None,
        cpus: float | None = None,
        pids: int | None = None,
        progress: Progress | None = None,
        **limits: Any,
    ) -> Function:
        if isinstance(package, bytes):
            data, default_name = package, "package.tar.gz"
        else:
            data, default_name = await asyncio.to_thread(load_package, package)
        limits.update(timeout=timeout, memory=memory, cpus=cpus, pids=pids)
        req = _api.put_function(name, data, filename or default_name, runtime, limits)
        return await self._send(req, progress)

    async def update_function(self, name: str, **limits: Any) -> Function:
        return await self._send(_api.patch_function(name, limits))

    async def delete_function(self, name: str) -> None:
        await self._send(_api.delete_function(name))

    async def get_package(self, sha256: str) -> bytes:
        return await self._send(_api.get_package(sha256))

    # ---- calls

    def new_idempotency_key(self) -> str:
        """A new ``Idempotency-Key`` (in the api's epoch once it is known: no db read)."""
        return _api.idempotency_key(self.epoch)

    async def invoke(
        self,
        name: str,
        params: Any = None,
        *,
        blocking: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Call:
        key = idempotency_key or self.new_idempotency_key()
        req = _api.invoke(name, _api.encode_params(params), blocking, timeout, key)
        return await self._send(req)

    async def run(self, name: str, params: Any = None, *, timeout: float = 300.0) -> Call:
        deadline = time.monotonic() + timeout
        call = await self.invoke(name, params, blocking=True, timeout=timeout)
        if call.final:
            return call
        return await self.wait_call(call.call_num, max(0.0, deadline - time.monotonic()))

    async def create_calls(self, calls: Sequence[tuple[str, Any]]) -> list[int]:
        encoded = [(name, _api.encode_params(params)) for name, params in calls]
        return await self.create_calls_encoded(encoded)

    async def create_calls_encoded(
        self, calls: Sequence[tuple[str, bytes]], *, idempotency_key: str | None = None
    ) -> list[int]:
        nums: list[int] = []
        for start in range(0, len(calls), _api.MAX_BATCH):
            key = _api.batch_key(idempotency_key, len(calls)) or self.new_idempotency_key()
            batch = _api.create_calls(calls[start : start + _api.MAX_BATCH], key)
            created: list[int] = await self._send(batch)
            nums.extend(created)
        return nums

    async def wait_calls(
        self,
        call_nums: Iterable[int],
        *,
        timeout: float = 0.0,
        return_when: _api.ReturnWhen = "ALL_COMPLETED",
    ) -> WaitResult:
        return await self._send(_api.wait_calls(call_nums, timeout, return_when))

    async def wait_call(self, call_num: int, timeout: float = 300.0) -> Call:
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            result = await self.wait_calls([call_num], timeout=left)
            if result.done:
                return result.done[0]
            if left <= 0:
                raise WaitTimeout(f"call {call_num} has not finished within {timeout:g}s")

    async def list_calls(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        after: int | None = None,
        since: _api.Time | None = None,
        until: _api.Time | None = None,
    ) -> CallPage:
        return await self._send(
            _api.list_calls(function, status, limit, before, after, since, until)
        )

    async def iter_calls(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        after: int | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Call]:
        before: int | None = None
        while True:
            page = await self.list_calls(
                function=function, status=status, limit=page_size, before=before, after=after
            )
            for call in page.items:
                yield call
            if page.next is None or not page.items:
                return
            before = page.items[-1].call_num

    async def get_call(self, call_num: int) -> Call:
        return await self._send(_api.get_call(call_num))

    async def get_call_logs(self, call_num: int) -> str:
        return await self._send(_api.get_call_logs(call_num))

    # ---- events, triggers, executions (docs/DURABLE.md)

    async def publish_events(self, *events: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._send(_api.publish_events(list(events)))

    async def list_events(
        self,
        subject: str | None = None,
        type: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> dict[str, Any]:
        page: dict[str, Any] = await self._send(_api.list_events(subject, type, limit, before))
        return page

    async def put_trigger(self, trigger_id: str, trigger: dict[str, Any]) -> dict[str, Any]:
        stored: dict[str, Any] = await self._send(_api.put_trigger(trigger_id, trigger))
        return stored

    async def get_trigger(self, trigger_id: str) -> dict[str, Any]:
        trigger: dict[str, Any] = await self._send(_api.get_trigger(trigger_id))
        return trigger

    async def list_triggers(
        self,
        active: bool | None = None,
        subject: str | None = None,
        execution: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        page: dict[str, Any] = await self._send(
            _api.list_triggers(active, subject, execution, limit, after)
        )
        return page

    async def delete_trigger(self, trigger_id: str) -> None:
        await self._send(_api.delete_trigger(trigger_id))

    async def start_execution(
        self,
        function: str,
        params: Any = None,
        *,
        name: str | None = None,
        execution_id: str | None = None,
        step_function: str | None = None,
    ) -> dict[str, Any]:
        req = _api.start_execution(
            _api.execution_body(function, params, name, execution_id, step_function)
        )
        execution: dict[str, Any] = await self._send(req)
        return execution

    async def get_execution(self, execution_id: str) -> dict[str, Any]:
        execution: dict[str, Any] = await self._send(_api.get_execution(execution_id))
        return execution

    # ---- workflow apps (docs/WORKFLOWS.md)

    async def deploy_app(self, name: str, source: bytes | str | os.PathLike[str]) -> App:
        """Deploy (or replace) an unum app from its folder (packed), a .tar.gz/.zip, or
        archive bytes."""
        data = source if isinstance(source, bytes) else load_package(source)[0]
        return await self._send(_api.put_app(name, data))

    async def start_session(
        self, name: str, event: Any = None, *, blocking: bool = True, timeout: float | None = None
    ) -> Session:
        """Start a session of app ``name`` (see ``Client.start_session``)."""
        body = _api.encode_params(event) if event is not None else b"null"
        return await self._send(_api.start_session(name, body, blocking, timeout))

    async def get_session(self, name: str | None, session: str) -> Session:
        return await self._send(_api.get_session(name, session))

    async def list_sessions(self, name: str, limit: int = 100) -> list[Session]:
        return await self._send(_api.list_sessions(name, limit))

    async def cancel_session(self, name: str, session: str) -> Session:
        return await self._send(_api.cancel_session(name, session))


async def _chunks(body: bytes, progress: Progress) -> AsyncIterator[bytes]:
    total = len(body)
    progress(0, total)
    for start in range(0, total, UPLOAD_CHUNK):
        chunk = body[start : start + UPLOAD_CHUNK]
        yield chunk
        progress(start + len(chunk), total)
