"""fum_client: the Python SDK of fum.

- ``Client`` / ``AsyncClient``: the whole v1 API, sync and asyncio;
- ``FunctionExecutor``: Lithops-style futures over deployed functions and Python callables;
- ``TriggerflowExecutor``: durable coordinators, run again from their history (Triggerflow);
- errors under ``FumError``; the api's objects in ``fum_client.models``.

The api's address and key resolve as for the ``fum`` CLI: the argument (``api_url=``),
else ``FUM_API_URL``, else the profile file, else ``http://127.0.0.1:3000``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import Client
from .config import Settings, resolve
from .durable import Execution, ExecutionFailed, TriggerflowExecutor
from .errors import (
    ApiError,
    ApiUnreachable,
    BadRequest,
    CallError,
    ConfigError,
    Conflict,
    FumError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TooManyRequests,
    Unauthorized,
    WaitTimeout,
)
from .executor import (
    ALL_COMPLETED,
    ALWAYS,
    ANY_COMPLETED,
    CallFuture,
    ExecutorClosed,
    FunctionExecutor,
)
from .keeper import NoKeeper
from .models import Call, CallPage, Function, Health, Node, Runtime, WaitResult
from .packaging import PackageError, pack_folder
from .serialize import SerializationError

if TYPE_CHECKING:
    from .aio import AsyncClient


def __getattr__(name: str) -> Any:
    # AsyncClient imports aiohttp (a tenth of a second): only for those who use it.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'fum_client' has no attribute {name!r}")


__all__ = [
    "ALL_COMPLETED",
    "ALWAYS",
    "ANY_COMPLETED",
    "ApiError",
    "ApiUnreachable",
    "AsyncClient",
    "BadRequest",
    "Call",
    "CallError",
    "CallFuture",
    "CallPage",
    "Client",
    "ConfigError",
    "Conflict",
    "Execution",
    "ExecutionFailed",
    "ExecutorClosed",
    "FumError",
    "Function",
    "FunctionExecutor",
    "Health",
    "NoKeeper",
    "Node",
    "NotFound",
    "PackageError",
    "PayloadTooLarge",
    "Runtime",
    "SerializationError",
    "ServerError",
    "Settings",
    "TooManyRequests",
    "TriggerflowExecutor",
    "Unauthorized",
    "WaitResult",
    "WaitTimeout",
    "pack_folder",
    "resolve",
]
