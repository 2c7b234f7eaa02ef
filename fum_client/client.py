"""``Client``: the whole v1 API, synchronously (thread-safe; keep-alive per thread)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _api
from ._http import Progress, SyncTransport
from .config import Settings, resolve
from .errors import WaitTimeout
from .keeper import configured_hosts, start_keeper
from .models import App, Call, CallPage, Function, Health, Node, Runtime, Session, WaitResult
from .packaging import load_package

if TYPE_CHECKING:
    from kazoo.client import KazooClient


class Client:
    """A client of one fum api.

    ``api_url``/``api_key``/``profile`` resolve as everywhere in fum: the argument, else
    ``FUM_API_URL``/``FUM_API_KEY``, else the profile file, else ``http://127.0.0.1:3000``.
    ``timeout`` bounds each request (long polls get their own wait on top).

    Errors: ``ApiUnreachable`` when nothing answers, ``ApiError`` subclasses (``NotFound``,
    ``BadRequest``, ``Conflict``, ...) carrying the api's code and message.
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        timeout: float = 30.0,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or resolve(api_url, api_key, profile)
        self.api_url = self.settings.api_url
        self._http = SyncTransport(self.settings, timeout)

    def __repr__(self) -> str:
        return f"Client({self.api_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (a request blocked in another thread fails at once)."""
        self._http.close()

    # ---- cluster

    def health(self) -> Health:
        """``GET /healthz``: the api and its db answer."""
        return self._http.send(_api.health())

    def keeper(self, hosts: str | None = None, timeout: float = 15.0) -> KazooClient:
        """A started kazoo client of the cluster's keeper (ZooKeeper's protocol): at
        ``hosts``, else ``FUM_KEEPER_HOSTS``, else where ``/healthz`` says. Stop it when
        done."""
        hosts = configured_hosts(hosts) or self.health().keeper
        return start_keeper(hosts, self.api_url, timeout)

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of the api."""
        document: dict[str, Any] = self._http.send(_api.openapi())
        return document

    def list_nodes(self) -> list[Node]:
        """Live workers, their load and warm sandboxes."""
        return self._http.send(_api.list_nodes())

    # ---- runtimes

    def list_runtimes(self) -> list[Runtime]:
        """Every runtime, in name order (page after page)."""
        items: list[Runtime] = []
        while True:
            page = self._http.send(_api.list_runtimes(items[-1].name if items else None))
            items += page.items
            if page.next is None or not page.items:
                return items

    def get_runtime(self, name: str) -> Runtime:
        return self._http.send(_api.get_runtime(name))

    def put_runtime(
        self, name: str, image: str, run: str, *, path: str = "/ws", dependencies: str = ""
    ) -> Runtime:
        """Create or replace the runtime ``name``."""
        return self._http.send(_api.put_runtime(name, image, run, path, dependencies))

    def delete_runtime(self, name: str) -> None:
        """Delete a runtime no function uses (``Conflict`` otherwise)."""
        self._http.send(_api.delete_runtime(name))

    # ---- functions

    def list_functions(self) -> list[Function]:
        """Every function, in name order (page after page)."""
        items: list[Function] = []
        while True:
            page = self._http.send(_api.list_functions(items[-1].name if items else None))
            items += page.items
            if page.next is None or not page.items:
                return items

    def get_function(self, name: str, wait: float | None = None) -> Function:
        """The function; with ``wait`` (s, at most 60), once its build is over."""
        return self._http.send(_api.get_function(name, wait))

    def deploy_function(
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
        """Create or replace a function from package bytes, a folder, or a .tar.gz/.zip file.

        A folder is packed into a tar.gz in memory. ``runtime`` is needed to create a
        function, optional to replace one. ``progress(sent, total)`` follows the upload.
        """
        if isinstance(package, bytes):
            data, default_name = package, "package.tar.gz"
        else:
            data, default_name = load_package(package)
        limits.update(timeout=timeout, memory=memory, cpus=cpus, pids=pids)
        req = _api.put_function(name, data, filename or default_name, runtime, limits)
        return self._http.send(req, progress)

    def update_function(self, name: str, **limits: Any) -> Function:
        """Change a function's limits (``timeout=``, ``memory=``...; ``None`` resets one)."""
        return self._http.send(_api.patch_function(name, limits))

    def delete_function(self, name: str) -> None:
        self._http.send(_api.delete_function(name))

    def get_package(self, sha256: str) -> bytes:
        """A stored function package by its sha256."""
        return self._http.send(_api.get_package(sha256))

    # ---- calls

    def new_idempotency_key(self) -> str:
        """A new ``Idempotency-Key`` (in the api's epoch once it is known: no db read)."""
        return self._http.new_key()

    def invoke(
        self,
        name: str,
        params: Any = None,
        *,
        blocking: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Call:
        """Invoke ``name``. Blocking: wait up to ``timeout`` s (default 60; the api caps it)
        for the end, and return the call as it is then (``call.final`` says whether it
        ended). The request carries ``idempotency_key`` (a new one if not given): sent
        again with it, it is answered with the same call."""
        return self.invoke_encoded(
            name,
            _api.encode_params(params),
            blocking=blocking,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    def invoke_encoded(
        self,
        name: str,
        params: bytes,
        *,
        blocking: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Call:
        """``invoke`` with the params already JSON text."""
        key = idempotency_key or self._http.new_key()
        return self._http.send(_api.invoke(name, params, blocking, timeout, key))

    def run(self, name: str, params: Any = None, *, timeout: float = 300.0) -> Call:
        """Invoke ``name`` and wait until the call has ended (``WaitTimeout`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        call = self.invoke(name, params, blocking=True, timeout=timeout)
        if call.final:
            return call
        return self.wait_call(call.call_num, max(0.0, deadline - time.monotonic()))

    def create_calls(self, calls: Sequence[tuple[str, Any]]) -> list[int]:
        """Create many calls at once (split into requests of 10,000): their call numbers."""
        encoded = [(name, _api.encode_params(params)) for name, params in calls]
        return self.create_calls_encoded(encoded)

    def create_calls_encoded(
        self, calls: Sequence[tuple[str, bytes]], *, idempotency_key: str | None = None
    ) -> list[int]:
        """``create_calls`` with each call's params already JSON text. Each request has an
        ``Idempotency-Key``; ``idempotency_key`` is that of a single request (at most
        10,000 calls)."""
        nums: list[int] = []
        for start in range(0, len(calls), _api.MAX_BATCH):
            key = _api.batch_key(idempotency_key, len(calls)) or self._http.new_key()
            batch = _api.create_calls(calls[start : start + _api.MAX_BATCH], key)
            created: list[int] = self._http.send(batch)
            nums.extend(created)
        return nums

    def wait_calls(
        self,
        call_nums: Iterable[int],
        *,
        timeout: float = 0.0,
        return_when: _api.ReturnWhen = "ALL_COMPLETED",
    ) -> WaitResult:
        """One ``POST /v1/calls/wait``: up to ``timeout`` s for any (``FIRST_COMPLETED``) or
        all of the calls (at most 10,000) to finish."""
        return self._http.send(_api.wait_calls(call_nums, timeout, return_when))

    def wait_call(self, call_num: int, timeout: float = 300.0) -> Call:
        """Wait until the call has ended; ``WaitTimeout`` if it has not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            result = self.wait_calls([call_num], timeout=left)
            if result.done:
                return result.done[0]
            if left <= 0:
                raise WaitTimeout(f"call {call_num} has not finished within {timeout:g}s")

    def list_calls(
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
        """One page of calls, newest first (``limit`` 1..1000, default 100); ``since``
        and ``until``: made in that window (seconds, a datetime or ISO 8601)."""
        return self._http.send(
            _api.list_calls(function, status, limit, before, after, since, until)
        )

    def iter_calls(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        after: int | None = None,
        page_size: int = 1000,
    ) -> Iterator[Call]:
        """Every matching call, newest first, page after page."""
        before: int | None = None
        while True:
            page = self.list_calls(
                function=function, status=status, limit=page_size, before=before, after=after
            )
            yield from page.items
            if page.next is None or not page.items:
                return
            before = page.items[-1].call_num

    def get_call(self, call_num: int) -> Call:
        return self._http.send(_api.get_call(call_num))

    def get_call_logs(self, call_num: int) -> str:
        """What the function printed during the call."""
        return self._http.send(_api.get_call_logs(call_num))

    # ---- events and triggers (docs/DURABLE.md)

    def publish_events(self, *events: dict[str, Any]) -> list[dict[str, Any]]:
        """Publish CloudEvents (``{"subject", "type", "data", ...}``); stored when this
        returns, and run through the triggers they activate."""
        return self._http.send(_api.publish_events(list(events)))

    def list_events(
        self,
        subject: str | None = None,
        type: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> dict[str, Any]:
        """A page of stored events, newest first: ``{"items": [...], "next": ...}``."""
        page: dict[str, Any] = self._http.send(_api.list_events(subject, type, limit, before))
        return page

    def put_trigger(self, trigger_id: str, trigger: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a trigger (the body of ``PUT /v1/triggers/{id}``)."""
        stored: dict[str, Any] = self._http.send(_api.put_trigger(trigger_id, trigger))
        return stored

    def get_trigger(self, trigger_id: str) -> dict[str, Any]:
        trigger: dict[str, Any] = self._http.send(_api.get_trigger(trigger_id))
        return trigger

    def list_triggers(
        self,
        active: bool | None = None,
        subject: str | None = None,
        execution: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        page: dict[str, Any] = self._http.send(
            _api.list_triggers(active, subject, execution, limit, after)
        )
        return page

    def delete_trigger(self, trigger_id: str) -> None:
        self._http.send(_api.delete_trigger(trigger_id))

    # ---- durable executions

    def start_execution(
        self,
        function: str,
        params: Any = None,
        *,
        name: str | None = None,
        execution_id: str | None = None,
        step_function: str | None = None,
    ) -> dict[str, Any]:
        """Start a durable coordinator: the deployed ``function`` (or the built-in one of
        ``TriggerflowExecutor``), run again with its history whenever what it waits for ends."""
        body = _api.execution_body(function, params, name, execution_id, step_function)
        execution: dict[str, Any] = self._http.send(_api.start_execution(body))
        return execution

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        execution: dict[str, Any] = self._http.send(_api.get_execution(execution_id))
        return execution

    # ---- workflow apps (docs/WORKFLOWS.md)

    def deploy_app(self, name: str, source: bytes | str | os.PathLike[str]) -> App:
        """Deploy (or replace) an unum app from its folder (packed), a .tar.gz/.zip, or
        archive bytes."""
        data = source if isinstance(source, bytes) else load_package(source)[0]
        return self._http.send(_api.put_app(name, data))

    def start_session(
        self, name: str, event: Any = None, *, blocking: bool = True, timeout: float | None = None
    ) -> Session:
        """Start a session of app ``name``: the event as unum's ingress takes it, or a bare
        value. Blocking: the session as it is when it ends, or after ``timeout`` s."""
        body = _api.encode_params(event) if event is not None else b"null"
        return self._http.send(_api.start_session(name, body, blocking, timeout))

    def get_session(self, name: str | None, session: str) -> Session:
        """A session of app ``name`` (None: whatever its app)."""
        return self._http.send(_api.get_session(name, session))

    def list_sessions(self, name: str, limit: int = 100) -> list[Session]:
        return self._http.send(_api.list_sessions(name, limit))

    def cancel_session(self, name: str, session: str) -> Session:
        return self._http.send(_api.cancel_session(name, session))
