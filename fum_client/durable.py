"""``TriggerflowExecutor``: run a coordinator function durably (docs/DURABLE.md).

A coordinator is plain Python with the executor API::

    def main(args):
        fexec = FunctionExecutor(**args)
        fexec.call_async(my_function, 0)
        res = fexec.get_result()
        fexec.map(my_function, range(10))
        return fexec.get_result()

    execution = TriggerflowExecutor().run(main, name="callasync")
    print(execution.result(timeout=120))

It runs in the cluster, as calls of the SDK's built-in function: inside it,
``FunctionExecutor`` is ``fum.durable.FunctionExecutor`` (pickled so), which never
waits: a ``get_result`` of calls not ended yet ends the coordinator's call (``WAITING``,
no sandbox held) and a trigger runs it again, with its history, when they have.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgspec

from .client import Client
from .errors import FumError, WaitTimeout
from .executor import FunctionExecutor
from .serialize import _is_users_module, _module_of, callable_spec, decode_result


class ExecutionFailed(FumError):
    """A durable execution ended ERROR: ``error`` is why (a call's error the coordinator
    did not catch, a ``NonDeterminismError``, ...)."""

    def __init__(self, execution_id: str, error: str | None) -> None:
        super().__init__(f"execution {execution_id} failed: {error}")
        self.execution_id = execution_id
        self.error = error


class _CoordinatorPickler(cloudpickle.Pickler):
    """cloudpickle, but ``fum_client.FunctionExecutor`` becomes the durable executor of
    ``fum.durable`` (importable in every sandbox, where fum_client is not)."""

    def reducer_override(self, obj: Any) -> Any:
        if obj is FunctionExecutor:
            from fum.durable import executor_class

            return executor_class, ()
        return super().reducer_override(obj)


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _CoordinatorPickler(buffer).dump(obj)
    return buffer.getvalue()


class Execution:
    """A handle on one durable execution: ``status``, ``result()``, ``history()``."""

    def __init__(self, client: Client, execution_id: str, callable_: bool) -> None:
        self.client = client
        self.id = execution_id
        self._callable = callable_

    def __repr__(self) -> str:
        return f"Execution({self.id!r})"

    def history(self) -> dict[str, Any]:
        """``GET /v1/executions/{id}``: status, runs, result or error, each step's calls."""
        return self.client.get_execution(self.id)

    @property
    def status(self) -> str:
        """RUNNING, WAITING (for its calls), DONE or ERROR."""
        return str(self.history()["status"])

    def result(self, timeout: float | None = None, poll: float = 0.05) -> Any:
        """What the coordinator returned, once it has (``WaitTimeout`` after ``timeout``
        seconds); ``ExecutionFailed`` if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            x = self.history()
            if x["status"] == "DONE":
                return decode_result(x["result"]) if self._callable else x["result"]
            if x["status"] == "ERROR":
                raise ExecutionFailed(self.id, x["error"])
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"execution {self.id} is still {x['status']} after {timeout}s")
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)


class TriggerflowExecutor:
    """Starts coordinators; takes ``FunctionExecutor``'s options (api, runtime, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._executor = FunctionExecutor(*args, **kwargs)
        self.client = self._executor.client

    def __enter__(self) -> TriggerflowExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._executor.close()

    def python(self, fn: Callable[..., Any], *, condition: bool = False) -> dict[str, Any]:
        """A trigger's condition (``condition=True``: ``fn(context, event) -> bool``, may
        change the context) or action (``fn(context, events)``) as a Python callable: the
        body part that runs it in a sandbox, as a call of the built-in function."""
        module = _module_of(fn)
        users = [module] if module is not None and _is_users_module(module) else []
        if condition:
            from fum.durable import evaluate

            fn = functools.partial(evaluate, fn)
        spec = callable_spec(fn, include_modules=users)
        call = msgspec.json.decode(spec.head + b'"}')
        del call["args"]  # the db adds each event's
        return {"kind": "python", "function": self._executor.builtin_function, "call": call}

    def put_trigger(
        self,
        trigger_id: str,
        activation: list[dict[str, Any]],
        condition: dict[str, Any] | Callable[..., Any] | None = None,
        action: dict[str, Any] | Callable[..., Any] | None = None,
        *,
        context: dict[str, Any] | None = None,
        transient: bool = True,
    ) -> dict[str, Any]:
        """``PUT /v1/triggers/{id}`` where the condition and the action may be Python
        callables (cloudpickled; run in a sandbox, never in a service)."""
        body: dict[str, Any] = {"activation": activation, "transient": transient}
        if condition is not None:
            body["condition"] = (
                self.python(condition, condition=True) if callable(condition) else condition
            )
        if action is not None:
            body["action"] = self.python(action) if callable(action) else action
        if context is not None:
            body["context"] = context
        return self.client.put_trigger(trigger_id, body)

    def run(
        self,
        coordinator: Any,
        args: Any = None,
        *,
        name: str | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start ``coordinator(args)`` (a callable, or a deployed function's name whose
        params are ``args``) as an execution. The same ``execution_id`` twice is one
        execution."""
        builtin = self._executor.builtin_function
        if isinstance(coordinator, str):
            function, params = coordinator, args or {}
        else:
            spec = callable_spec(coordinator, dumps=_dumps)
            function = builtin
            params = msgspec.json.decode(spec.params((args if args is not None else {},), {}))
            name = name or spec.name
        x = self.client.start_execution(
            function, params, name=name, execution_id=execution_id, step_function=builtin
        )
        return Execution(self.client, x["id"], not isinstance(coordinator, str))
