"""Every api request, built once for both clients: method, path, body, and how to read the answer.

``Client`` (sync) and ``AsyncClient`` (asyncio) differ only in how they send a ``Req``.
"""

from __future__ import annotations

import functools
import io
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import msgspec

from .models import (
    App,
    Call,
    CallPage,
    Function,
    FunctionPage,
    Health,
    Node,
    Runtime,
    RuntimePage,
    Session,
    WaitResult,
    _CallNums,
    _Items,
    _Logs,
)

T = TypeVar("T")

ReturnWhen = Literal["ALL_COMPLETED", "FIRST_COMPLETED"]
MAX_BATCH = 10_000  # calls in one POST /v1/calls, and numbers in one POST /v1/calls/wait
# The longest a blocking invoke without a timeout is asked to wait: the api's default cap
# (FUM_BLOCKING_TIMEOUT). Sent as the request's timeout, so that the client's own timeout
# on the request is always longer than the api's wait (else it would give up first).
DEFAULT_BLOCKING_WAIT = 60.0

IDEMPOTENCY_HEADER = "Idempotency-Key"
EPOCH_HEADER = "Fum-Epoch"  # on every answer: the api's epoch, which keys may begin with
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")


def idempotency_key(epoch: str | None) -> str:
    """A new ``Idempotency-Key``: ``EPOCH.random`` once the api's epoch is known (such a key
    costs the api no db read, services/api/idempotency.py), else ``random``."""
    token = uuid.uuid4().hex
    return f"{epoch}.{token}" if epoch else token


def batch_key(key: str | None, calls: int) -> str | None:
    """A caller's key for a creation of ``calls`` calls: one request's, so at most
    MAX_BATCH calls."""
    if key is not None and calls > MAX_BATCH:
        raise ValueError(f"one idempotency_key covers one request: at most {MAX_BATCH} calls")
    return key


def epoch_of(value: str | None) -> str | None:
    """The epoch of a ``Fum-Epoch`` header, if it is one (a proxy may send anything)."""
    return value if value and _EPOCH.fullmatch(value) else None


_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Req(Generic[T]):
    """One request and the reader of its answer's body."""

    method: str
    path: str
    read: Callable[[int, bytes], T]
    query: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None
    timeout: float | None = None  # the longest the api may take to answer (long polls)
    idempotent: bool = True  # the request itself may be sent twice (GET, PUT, DELETE...)
    # A request that is not idempotent by itself (an invoke) becomes so with a key: the api
    # answers a repeat with what it did the first time.
    idempotency_key: str | None = None

    @property
    def resendable(self) -> bool:
        """Whether it may be sent again when the connection broke before an answer."""
        return self.idempotent or self.idempotency_key is not None

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"


@functools.cache
def _typed(kind: type[T]) -> Callable[[int, bytes], T]:
    decoder = msgspec.json.Decoder(kind)
    return lambda _status, body: decoder.decode(body)


@functools.cache
def _items(kind: type[T]) -> Callable[[int, bytes], list[T]]:
    decoder = msgspec.json.Decoder(_Items)

    def read(_status: int, body: bytes) -> list[T]:
        return msgspec.convert(decoder.decode(body).items, list[kind])  # type: ignore[valid-type]

    return read


def _nothing(_status: int, _body: bytes) -> None:
    return None


def _any(_status: int, body: bytes) -> Any:
    return msgspec.json.decode(body) if body else None


def _raw(_status: int, body: bytes) -> bytes:
    return body


def _name(name: str) -> str:
    return quote(name, safe="")


def _json_body(value: Any) -> bytes:
    return _json.encode(value)


def encode_params(params: Any) -> bytes:
    """A call's params as JSON text (``None`` is ``{}``, as the api defaults it)."""
    return b"{}" if params is None else _json.encode(params)


# ---- health and documents


def health() -> Req[Health]:
    return Req("GET", "/healthz", _typed(Health))


def openapi() -> Req[Any]:
    return Req("GET", "/v1/openapi.json", _any)


# ---- runtimes


# How many runtimes or functions the clients ask for at a time when they list them all.
PAGE = 1000


def _page_query(after: str | None) -> dict[str, str]:
    return {"limit": str(PAGE)} if after is None else {"limit": str(PAGE), "after": after}


def list_runtimes(after: str | None = None) -> Req[RuntimePage]:
    """A page of runtimes in name order, from the first after ``after``."""
    return Req("GET", "/v1/runtimes", _typed(RuntimePage), query=_page_query(after))


def get_runtime(name: str) -> Req[Runtime]:
    return Req("GET", f"/v1/runtimes/{_name(name)}", _typed(Runtime))


def put_runtime(name: str, image: str, run: str, path: str, dependencies: str) -> Req[Runtime]:
    body = {"image": image, "run": run, "path": path, "dependencies": dependencies}
    return Req(
        "PUT",
        f"/v1/runtimes/{_name(name)}",
        _typed(Runtime),
        body=_json_body(body),
        content_type="application/json",
    )


def delete_runtime(name: str) -> Req[None]:
    return Req("DELETE", f"/v1/runtimes/{_name(name)}", _nothing)


# ---- functions


def list_functions(after: str | None = None) -> Req[FunctionPage]:
    """A page of functions in name order, from the first after ``after``."""
    return Req("GET", "/v1/functions", _typed(FunctionPage), query=_page_query(after))


def get_function(name: str, wait: float | None = None) -> Req[Function]:
    """The function; with ``wait``, once its build is over (or after ``wait`` seconds)."""
    if not wait:
        return Req("GET", f"/v1/functions/{_name(name)}", _typed(Function))
    return Req(
        "GET",
        f"/v1/functions/{_name(name)}",
        _typed(Function),
        query={"wait": f"{wait:g}"},
        timeout=wait + 30,
    )


@dataclass(frozen=True)
class Multipart:
    """A multipart/form-data body built in memory (the package plus text fields)."""

    body: bytes
    content_type: str


def multipart(fields: dict[str, str], filename: str, package: bytes) -> Multipart:
    """The form of ``PUT /v1/functions/{name}``: text fields, then the file ``module``."""
    boundary = f"fum-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode())
        out.write(b"\r\n")
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    out.write(f"--{boundary}\r\n".encode())
    out.write(f'Content-Disposition: form-data; name="module"; filename="{safe_name}"\r\n'.encode())
    out.write(b"Content-Type: application/octet-stream\r\n\r\n")
    out.write(package)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return Multipart(out.getvalue(), f"multipart/form-data; boundary={boundary}")


def camel(name: str) -> str:
    """``min_warm`` -> ``minWarm``: limits as the api names them."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def limit_fields(limits: dict[str, Any]) -> dict[str, str]:
    """Limits given (not ``None``) as form fields."""
    return {camel(key): str(value) for key, value in limits.items() if value is not None}


def put_function(
    name: str,
    package: bytes,
    filename: str,
    runtime: str | None,
    limits: dict[str, Any],
) -> Req[Function]:
    fields = {"runtime": runtime} if runtime else {}
    fields.update(limit_fields(limits))
    form = multipart(fields, filename, package)
    return Req(
        "PUT",
        f"/v1/functions/{_name(name)}",
        _typed(Function),
        body=form.body,
        content_type=form.content_type,
    )


def patch_function(name: str, limits: dict[str, Any]) -> Req[Function]:
    return Req(
        "PATCH",
        f"/v1/functions/{_name(name)}",
        _typed(Function),
        body=_json_body({camel(key): value for key, value in limits.items()}),
        content_type="application/json",
    )


def delete_function(name: str) -> Req[None]:
    return Req("DELETE", f"/v1/functions/{_name(name)}", _nothing)


def get_package(sha256: str) -> Req[bytes]:
    return Req("GET", f"/v1/packages/{_name(sha256)}", _raw)


# ---- calls


def _blocking(
    path: str,
    read: Callable[[int, bytes], T],
    body: bytes,
    blocking: bool,
    timeout: float | None,
    key: str | None = None,
) -> Req[T]:
    """A POST that may wait for its end (``?blocking``, ``?timeout``): sent again only
    with its ``Idempotency-Key``."""
    query = {"blocking": "true" if blocking else "false"}
    wait = DEFAULT_BLOCKING_WAIT if timeout is None else timeout
    if blocking:
        query["timeout"] = f"{wait:g}"
    return Req(
        "POST",
        path,
        read,
        query=query,
        body=body,
        content_type="application/json",
        timeout=wait if blocking else None,
        idempotent=False,
        idempotency_key=key,
    )


def invoke(name: str, params: bytes, blocking: bool, timeout: float | None, key: str) -> Req[Call]:
    path = f"/v1/functions/{_name(name)}/invoke"
    return _blocking(path, _typed(Call), params, blocking, timeout, key)


def create_calls(calls: Sequence[tuple[str, bytes]], key: str) -> Req[list[int]]:
    """``calls``: (function name, params as JSON text); at most MAX_BATCH."""
    names: dict[str, bytes] = {}
    parts = []
    for function, params in calls:
        encoded = names.get(function)
        if encoded is None:
            encoded = names[function] = _json.encode(function)
        parts.append(b'{"function":' + encoded + b',"params":' + params + b"}")
    body = b'{"calls":[' + b",".join(parts) + b"]}"
    decoder = msgspec.json.Decoder(_CallNums)
    return Req(
        "POST",
        "/v1/calls",
        lambda _s, b: decoder.decode(b).call_nums,
        body=body,
        content_type="application/json",
        idempotent=False,
        idempotency_key=key,
    )


def wait_calls(
    call_nums: Iterable[int], timeout: float, return_when: ReturnWhen
) -> Req[WaitResult]:
    body = {"callNums": list(call_nums), "timeout": timeout, "returnWhen": return_when}
    return Req(
        "POST",
        "/v1/calls/wait",
        _typed(WaitResult),
        body=_json_body(body),
        content_type="application/json",
        timeout=timeout,
    )


Time = float | datetime | str  # seconds since the epoch, a datetime, or ISO 8601


def _time(value: Time | None) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return None if value is None else str(value)


def list_calls(
    function: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
    since: Time | None = None,
    until: Time | None = None,
) -> Req[CallPage]:
    query = {
        key: str(value)
        for key, value in (
            ("function", function),
            ("status", status),
            ("limit", limit),
            ("before", before),
            ("after", after),
            ("since", _time(since)),
            ("until", _time(until)),
        )
        if value is not None
    }
    return Req("GET", "/v1/calls", _typed(CallPage), query=query)


def get_call(call_num: int) -> Req[Call]:
    return Req("GET", f"/v1/calls/{int(call_num)}", _typed(Call))


def get_call_logs(call_num: int) -> Req[str]:
    decoder = msgspec.json.Decoder(_Logs)
    return Req("GET", f"/v1/calls/{int(call_num)}/logs", lambda _s, b: decoder.decode(b).logs)


# ---- nodes


def list_nodes() -> Req[list[Node]]:
    return Req("GET", "/v1/nodes", _items(Node))


# ---- events, triggers, executions (plain JSON objects, as the api documents them)


def _query(**values: Any) -> dict[str, str]:
    return {
        key: (str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in values.items()
        if value is not None
    }


def publish_events(events: list[dict[str, Any]]) -> Req[list[dict[str, Any]]]:
    return Req(
        "POST",
        "/v1/events",
        lambda _s, b: list(msgspec.json.decode(b)["items"]),
        body=_json_body(events),
        content_type="application/json",
    )


def list_events(
    subject: str | None = None,
    type: str | None = None,
    limit: int | None = None,
    before: int | None = None,
) -> Req[Any]:
    query = _query(subject=subject, type=type, limit=limit, before=before)
    return Req("GET", "/v1/events", _any, query=query)


def put_trigger(trigger_id: str, trigger: dict[str, Any]) -> Req[Any]:
    return Req(
        "PUT",
        f"/v1/triggers/{_name(trigger_id)}",
        _any,
        body=_json_body(trigger),
        content_type="application/json",
    )


def get_trigger(trigger_id: str) -> Req[Any]:
    return Req("GET", f"/v1/triggers/{_name(trigger_id)}", _any)


def list_triggers(
    active: bool | None = None,
    subject: str | None = None,
    execution: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Req[Any]:
    query = _query(active=active, subject=subject, execution=execution, limit=limit, after=after)
    return Req("GET", "/v1/triggers", _any, query=query)


def delete_trigger(trigger_id: str) -> Req[None]:
    return Req("DELETE", f"/v1/triggers/{_name(trigger_id)}", _nothing)


def execution_body(
    function: str,
    params: Any,
    name: str | None,
    execution_id: str | None,
    step_function: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"function": function, "params": params or {}}
    for key, value in (("name", name), ("id", execution_id), ("stepFunction", step_function)):
        if value is not None:
            body[key] = value
    return body


def start_execution(body: dict[str, Any]) -> Req[Any]:
    # the same id started twice is one execution: safe to send again
    return Req(
        "POST",
        "/v1/executions",
        _any,
        body=_json_body(body),
        content_type="application/json",
        idempotent="id" in body,
    )


def get_execution(execution_id: str) -> Req[Any]:
    return Req("GET", f"/v1/executions/{_name(execution_id)}", _any)


# ---- workflow apps and sessions


def put_app(name: str, archive: bytes) -> Req[App]:
    return Req(
        "PUT",
        f"/v1/apps/{_name(name)}",
        _typed(App),
        body=archive,
        content_type="application/gzip" if archive[:2] == b"\x1f\x8b" else "application/zip",
    )


def start_session(name: str, event: bytes, blocking: bool, timeout: float | None) -> Req[Session]:
    path = f"/v1/apps/{_name(name)}/sessions"
    return _blocking(path, _typed(Session), event, blocking, timeout)


def get_session(name: str | None, session: str) -> Req[Session]:
    if name is None:
        return Req("GET", f"/v1/sessions/{_name(session)}", _typed(Session))
    return Req("GET", f"/v1/apps/{_name(name)}/sessions/{_name(session)}", _typed(Session))


def list_sessions(name: str, limit: int) -> Req[list[Session]]:
    query = {"limit": str(limit)}
    return Req("GET", f"/v1/apps/{_name(name)}/sessions", _items(Session), query=query)


def cancel_session(name: str, session: str) -> Req[Session]:
    return Req("DELETE", f"/v1/apps/{_name(name)}/sessions/{_name(session)}", _typed(Session))
