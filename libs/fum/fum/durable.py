"""The coordinator's side of a durable execution: an executor that replays its history.

A durable coordinator is a function (a Python callable started by
``fum_client.TriggerflowExecutor``, or a deployed function decorated with
``@coordinator``) that calls other functions with the executor API (``call_async``,
``map``, ``map_reduce``, ``get_result``). It never waits for a call: each step it issues
gets a sequence number, in program order, and when it asks for a result that its
history does not hold yet it ends, telling the db which steps are new and which it
waits for (a **suspension**). The db makes those calls and, once they have all ended,
runs the coordinator again with the history; the steps it issued before get their
recorded results without running again. So a coordinator must issue the same steps in
the same order every run: no randomness, no clock, no I/O of its own deciding what it
calls. A step that differs from the history at its number fails the execution with
``NonDeterminismError``, naming both.

Only the standard library here (and cloudpickle, in a runtime that runs callables).
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

SUSPEND_KEY = "fum.durable"
NO_DATA: Any = object()  # call_async(fn) with no data: fn(), or {} for a function

_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "fum_durable_run", default=None
)


class NonDeterminismError(RuntimeError):
    """The coordinator issued another step at a sequence number than its history holds."""


class CallFailed(RuntimeError):
    """A call of the coordinator failed (ERROR or TIMEOUT): its error as the cluster has it."""


class _Suspend(BaseException):
    """Unwinds the coordinator when it must wait (a BaseException: ``except Exception`` in
    the coordinator's code does not stop it)."""


class _Step:
    """One step: a call, a map, or a map_reduce's reduce; its calls' records once ended."""

    def __init__(self, seq: int, identity: str, kind: str, record: dict[str, Any] | None):
        self.seq, self.identity, self.kind = seq, identity, kind
        self.calls: list[dict[str, Any]] = record["calls"] if record else []
        self.recorded = record is not None

    @property
    def done(self) -> bool:
        return self.recorded and all(
            c.get("status") in ("DONE", "ERROR", "TIMEOUT") for c in self.calls
        )


class _Run:
    """One run of a coordinator: its history, the steps it issues, what it waits for."""

    def __init__(self, durable: dict[str, Any]) -> None:
        self.execution: str = durable["execution"]
        self.run: int = durable["run"]
        self.step_function: str | None = durable.get("stepFunction")
        self.history = {step["seq"]: step for step in durable.get("steps", [])}
        self.seq = 0
        self.new_steps: list[dict[str, Any]] = []

    def step(
        self, identity: str, kind: str, function: str, params: Callable[[], list[Any]]
    ) -> _Step:
        """The next step in program order: from the history, or new (its params made now)."""
        seq, self.seq = self.seq, self.seq + 1
        record = self.history.get(seq)
        if record is not None:
            if record["identity"] != identity:
                raise NonDeterminismError(
                    f"non-determinism in execution {self.execution}: step {seq} is "
                    f"{identity} in this run, but the history has {record['identity']} "
                    "(a coordinator must issue the same calls in the same order every run)"
                )
            return _Step(seq, identity, kind, record)
        self.new_steps.append(
            {
                "seq": seq,
                "kind": kind,
                "identity": identity,
                "function": function,
                "params": params(),
            }
        )
        return _Step(seq, identity, kind, None)

    def suspension(self, wait: list[int]) -> dict[str, Any]:
        return {SUSPEND_KEY: {"suspend": {"steps": self.new_steps, "wait": sorted(set(wait))}}}


def _current_run() -> _Run:
    run = _current.get()
    if run is None:
        raise RuntimeError(
            "fum.durable.FunctionExecutor runs only inside a coordinator "
            "(started by TriggerflowExecutor.run or POST /v1/executions)"
        )
    return run


class DurableFuture:
    """The future of one call of a step (``index`` in a map), filled from the history."""

    def __init__(self, step: _Step, index: int, decode: Callable[[Any], Any]) -> None:
        self._step, self._index, self._decode = step, index, decode
        self._read = False
        self._produce_output = True  # False: a map_reduce's map call (the reduce speaks)
        self._after: _Step | None = None  # a reduce not issued yet waits on its map

    @property
    def done(self) -> bool:
        return self._step.done

    @property
    def waits_on(self) -> int:
        return self._step.seq

    def result(self) -> Any:
        call = self._step.calls[self._index]
        if call["status"] != "DONE":
            raise CallFailed(
                f"call {call['callNum']} ({self._step.identity}) ended {call['status']}: "
                f"{call.get('error') or ''}".rstrip()
            )
        return self._decode(call.get("result"))


def _callable_identity(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)[:80]
    return f"callable:{module}.{name}"


def _unpickled(result: Any) -> Any:
    import cloudpickle

    return cloudpickle.loads(base64.b64decode(result["pickle"]))


def split_arguments(
    data: Any, extra_args: Any, takes: frozenset[str] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Lithops' rule (``fum_client``'s executor uses it too): a tuple is the positional
    arguments, a dict whose keys are all parameter names (``takes``; None: any) the
    keyword arguments, anything else the single argument."""
    if data is NO_DATA:
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
    elif isinstance(data, tuple):
        args, kwargs = data, {}
    elif (
        isinstance(data, dict)
        and data
        and all(isinstance(k, str) for k in data)
        and (takes is None or set(data) <= takes)
    ):
        args, kwargs = (), dict(data)
    else:
        args, kwargs = (data,), {}
    if extra_args is not None:
        if isinstance(extra_args, dict):
            kwargs = {**kwargs, **extra_args}
        else:
            args = (*args, *extra_args)
    return args, kwargs


def parameter_names(fn: Any) -> frozenset[str] | None:
    """The names ``fn`` takes by keyword; None when it takes ``**kwargs`` (or is opaque)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return frozenset(names)


@functools.lru_cache(maxsize=64)
def _pickled_callable(fn: Any) -> tuple[str, str]:
    import cloudpickle

    pickled = cloudpickle.dumps(fn)
    return hashlib.sha256(pickled).hexdigest()[:24], base64.b64encode(pickled).decode("ascii")


def _callable_params(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The built-in function's params for ``fn(*args, **kwargs)`` (fum_client's protocol 1)."""
    import cloudpickle

    key, pickled = _pickled_callable(fn)
    return {
        "v": 1,
        "py": "{}.{}".format(*sys.version_info[:2]),
        "name": getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "callable"),
        "fnKey": key,
        "fn": pickled,
        "args": base64.b64encode(cloudpickle.dumps((args, kwargs))).decode("ascii"),
    }


class FunctionExecutor:
    """The executor inside a coordinator: ``fum_client.FunctionExecutor``'s API, durable.

    Its options (a client's api address, a runtime) are taken and ignored: its calls are
    made by the db, on the runtime of the execution's built-in function.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run = _current_run()
        self._futures: list[DurableFuture] = []
        self._last = "call"

    def __enter__(self) -> FunctionExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _target(self, fn: str | Callable[..., Any]) -> tuple[str, str, Callable[[Any], Any]]:
        """(identity, function to call, decoder of its results)."""
        if isinstance(fn, str):
            return f"function:{fn}", fn, lambda result: result
        if not callable(fn):
            raise TypeError(f"call a deployed function's name or a callable, not {fn!r}")
        if self._run.step_function is None:
            raise RuntimeError(
                "this execution has no built-in function for callables: start it with "
                "TriggerflowExecutor (or give stepFunction), or call deployed functions by name"
            )
        return _callable_identity(fn), self._run.step_function, _unpickled

    def _params(self, fn: str | Callable[..., Any], data: Any, extra_args: Any) -> Any:
        if isinstance(fn, str):
            params = {} if data is NO_DATA or data is None else data
            if extra_args:
                params = {**params, **dict(extra_args)}
            return params
        args, kwargs = split_arguments(data, extra_args, parameter_names(fn))
        return _callable_params(fn, args, kwargs)

    def _step(
        self, fn: str | Callable[..., Any], kind: str, items: list[Any], extra_args: Any
    ) -> list[DurableFuture]:
        identity, function, decode = self._target(fn)
        step = self._run.step(
            identity, kind, function, lambda: [self._params(fn, d, extra_args) for d in items]
        )
        if step.recorded and len(step.calls) != len(items):
            raise NonDeterminismError(
                f"non-determinism in execution {self._run.execution}: step {step.seq} "
                f"({identity}) has {len(step.calls)} calls in the history and "
                f"{len(items)} in this run"
            )
        futures = [DurableFuture(step, i, decode) for i in range(len(items))]
        self._futures.extend(futures)
        return futures

    def call_async(
        self,
        fn: str | Callable[..., Any],
        data: Any = NO_DATA,
        *,
        extra_args: Any = None,
        **options: Any,
    ) -> DurableFuture:
        """One call of ``fn``: issued when the coordinator waits, or found in the history."""
        self._last = "call"
        return self._step(fn, "call", [data], extra_args)[0]

    def map(
        self,
        map_function: str | Callable[..., Any],
        map_iterdata: Iterable[Any],
        *,
        extra_args: Any = None,
        **options: Any,
    ) -> list[DurableFuture]:
        """One call per item, as one step (joined by one trigger)."""
        self._last = "map"
        return self._step(map_function, "map", list(map_iterdata), extra_args)

    def map_reduce(
        self,
        map_function: str | Callable[..., Any],
        map_iterdata: Iterable[Any],
        reduce_function: str | Callable[..., Any],
        *,
        extra_args: Any = None,
        **options: Any,
    ) -> list[DurableFuture]:
        """``map``, then ``reduce_function(results)`` once the map has ended: two steps.
        The map futures then the reduce's; ``get_result`` of them is the reduce's result."""
        self._last = "map_reduce"
        mapped = self._step(map_function, "map", list(map_iterdata), extra_args)
        if all(f.done for f in mapped):
            results = [f.result() for f in mapped]  # a failed map call fails the reduce
            (reduced,) = self._step(reduce_function, "reduce", [results], None)
        else:
            # The reduce's number is taken now, so the steps after it keep theirs; it is
            # issued by the run that finds the map ended.
            seq = self._run.seq
            self._run.seq += 1
            pending = _Step(seq, "reduce", "reduce", None)
            reduced = DurableFuture(pending, 0, lambda r: r)
            reduced._after = mapped[0]._step
            self._futures.append(reduced)
        for f in mapped:
            f._produce_output = False
        return [*mapped, reduced]

    def get_result(
        self,
        fs: DurableFuture | Iterable[DurableFuture] | None = None,
        throw_except: bool = True,
        **options: Any,
    ) -> Any:
        """The results (default: of the futures not read yet), or the coordinator ends
        here to wait for them and runs again when they have."""
        if isinstance(fs, DurableFuture):
            futures, single = [fs], True
        else:
            unread = fs is None
            futures = [f for f in self._futures if not f._read] if unread else list(fs or [])
            single = False
        pending = [f for f in futures if not f.done]
        if pending:
            wait = [f._after.seq if f._after is not None else f.waits_on for f in pending]
            raise _Suspend(self._run.suspension(wait))
        outputs = [f for f in futures if f._produce_output]
        results = []
        for f in outputs:
            try:
                results.append(f.result())
            except CallFailed:
                if throw_except:
                    raise
                results.append(None)
        if fs is None:
            for f in futures:
                f._read = True
        if single or (fs is None and len(results) == 1 and self._last != "map"):
            return results[0]
        if fs is not None and len(outputs) == 1 and len(futures) > 1:
            return results[0]  # map futures + the reduce future
        return results


def executor_class() -> type[FunctionExecutor]:
    """This module's executor: what ``fum_client.FunctionExecutor`` stands for in a
    coordinator pickled by ``TriggerflowExecutor``."""
    return FunctionExecutor


def evaluate(
    condition: Callable[[dict[str, Any], dict[str, Any]], Any],
    context: dict[str, Any],
    event: dict[str, Any],
) -> dict[str, Any]:
    """A trigger's Python condition on one event: whether it fires, and the context as
    the condition left it (the db keeps it)."""
    return {"fired": bool(condition(context, event)), "context": context}


def coordinate(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], durable: dict[str, Any]
) -> tuple[bool, Any]:
    """Run one run of a coordinator: (True, its suspension) if it must wait, else
    (False, what it returned)."""
    token = _current.set(_Run(durable))
    try:
        return False, fn(*args, **kwargs)
    except _Suspend as suspended:
        return True, suspended.args[0]
    finally:
        _current.reset(token)


def coordinator(handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Make a deployed function's ``handle(params)`` a durable coordinator: start it with
    ``POST /v1/executions`` (``fum_client.Client.start_execution``); its params are as
    given there, and it calls other functions by name with ``FunctionExecutor()``."""

    @functools.wraps(handle)
    def run(params: Any) -> Any:
        durable = params.pop("durable", None) if isinstance(params, dict) else None
        if durable is None:
            raise RuntimeError("a coordinator runs as an execution (POST /v1/executions)")
        _, value = coordinate(handle, (params,), {}, durable)
        return value

    return run


__all__ = [
    "CallFailed",
    "DurableFuture",
    "FunctionExecutor",
    "NonDeterminismError",
    "coordinate",
    "coordinator",
    "evaluate",
    "executor_class",
]
