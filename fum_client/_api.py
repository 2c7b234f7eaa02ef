"""Every api request, built once for both clients: method, path, body, and how to read the answer.

``Client`` (sync) and ``AsyncClient`` (asyncio) differ only in how they send a ``Req``.
"""

from __future__ import annotations

import functools
import io
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import msgspec

from .models import (
    Call,
    CallPage,
    Function,
    Health,
    Node,
    Runtime,
    WaitResult,
    _CallNums,
    _Items,
    _Logs,
)

T = TypeVar("T")

ReturnWhen = Literal["ALL_COMPLETED", "FIRST_COMPLETED"]
MAX_BATCH = 10_000  # calls in one POST /v1/calls, and numbers in one POST /v1/calls/wait

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
    idempotent: bool = True  # may be sent again if the connection broke before an answer

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


def list_runtimes() -> Req[list[Runtime]]:
    return Req("GET", "/v1/runtimes", _items(Runtime))


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


def list_functions() -> Req[list[Function]]:
    return Req("GET", "/v1/functions", _items(Function))


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


def invoke(name: str, params: bytes, blocking: bool, timeout: float | None) -> Req[Call]:
    query = {"blocking": "true" if blocking else "false"}
    if blocking and timeout is not None:
        query["timeout"] = f"{timeout:g}"
    return Req(
        "POST",
        f"/v1/functions/{_name(name)}/invoke",
        _typed(Call),
        query=query,
        body=params,
        content_type="application/json",
        timeout=timeout if blocking else None,
        idempotent=False,
    )


def create_calls(calls: Sequence[tuple[str, bytes]]) -> Req[list[int]]:
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


def list_calls(
    function: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
) -> Req[CallPage]:
    query = {
        key: str(value)
        for key, value in (
            ("function", function),
            ("status", status),
            ("limit", limit),
            ("before", before),
            ("after", after),
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
