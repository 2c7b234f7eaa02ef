"""``FunctionExecutor``: Lithops' executor on fum (``call_async``, ``map``, ``map_reduce``,
``wait``, ``get_result``), for deployed functions and for plain Python callables.

How calls travel: ``call_async``/``map`` only queue; one submitter thread sends whatever
is queued as one ``POST /v1/calls`` (up to 10,000 calls), so a burst of calls becomes a
few requests while a lone call goes out at once (as a blocking invoke that waits up to
``lone_call_wait`` s, so that a quick call is one request). Submitted calls are watched by up to
``max_waiters`` threads, each long-polling ``POST /v1/calls/wait`` (FIRST_COMPLETED) for
the oldest unwatched calls; the answer resolves every call finished by then. A call that
ends ERROR or TIMEOUT is submitted again while it has retries left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _api
from .client import Client
from .errors import (
    ApiError,
    ApiUnreachable,
    BadRequest,
    FumError,
    NotFound,
    ServerError,
    TooManyRequests,
    WaitTimeout,
    call_error,
)
from .models import FINAL_STATUSES, Call, WaitResult
from .serialize import (
    NO_DATA,
    CallableSpec,
    SerializationError,
    callable_spec,
    decode_result,
    encode_json_params,
    handler_package,
)

# Lithops' names and values for wait(return_when=...).
ALL_COMPLETED = 1
ANY_COMPLETED = 2
ALWAYS = 3

HANDLER_RUN = "python3 -m fum main:handle"
LONG_POLL_S = 30.0  # one wait request; the api answers sooner when a call finishes
LINGER_S = 0.05  # with many calls under way, how long one wait collects finished calls
LINGER_MIN = 32  # calls still pending from which a wait lingers
MAX_BATCH_BYTES = 32 * 1024 * 1024
# A call submitted alone goes as a blocking invoke that waits this long for the result:
# a quick call costs one request; a slow one holds the next submit back this long at most.
LONE_CALL_WAIT_S = 0.025
UNREACHABLE_GRACE_S = 30.0  # how long the executor keeps retrying an api that does not answer


class ExecutorClosed(FumError):
    """The executor was closed before the call finished (the call itself goes on)."""


_UNSET: Any = object()


class CallFuture:
    """The future of one call: ``result()``, ``status()``, ``done()``; ``await``-able too.

    ``call_num`` is the call's number in fum (the latest attempt's; ``call_nums`` has
    every attempt), ``call`` the finished ``Call`` as the api reported it.
    """

    def __init__(
        self,
        executor: FunctionExecutor,
        function: str,
        params: bytes,
        decode: Callable[[Any], Any] | None,
        retries: int,
    ) -> None:
        self._executor = executor
        self.function = function
        self._params = params
        self._decode = decode
        self._retries_left = retries
        self.call_nums: list[int] = []
        self.call: Call | None = None
        self._event = threading.Event()
        self._error: BaseException | None = None
        self._value: Any = _UNSET
        self._callbacks: list[Callable[[CallFuture], None]] = []
        self._produce_output = True
        self._read = False

    def __repr__(self) -> str:
        return f"<CallFuture {self.function} call={self.call_num} {self.status(refresh=False)}>"

    @property
    def call_num(self) -> int | None:
        return self.call_nums[-1] if self.call_nums else None

    @property
    def attempts(self) -> int:
        return len(self.call_nums)

    def done(self) -> bool:
        """Whether the call has ended (or could not be submitted)."""
        return self._event.is_set()

    @property
    def ready(self) -> bool:
        """Lithops' name for ``done()``."""
        return self._event.is_set()

    @property
    def error(self) -> bool:
        """Whether the call ended in an error (Lithops' ``future.error``)."""
        return self._event.is_set() and self._failure() is not None

    def status(self, refresh: bool = True) -> str:
        """``NEW`` (not submitted yet), ``PENDING``, ``RUNNING``, ``DONE``, ``ERROR``, ``TIMEOUT``.

        Asks the api while the call is under way (``refresh=False``: what is known here).
        """
        if self.done():
            if self.call is not None:
                return self.call.status
            return "ERROR"
        num = self.call_num
        if num is None:
            return "NEW"
        if not refresh:
            return "PENDING"
        status = self._executor.client.get_call(num).status
        # Finished in the api but not yet here: report it as the api does.
        return status

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the call ends; whether it did within ``timeout`` s."""
        return self._event.wait(timeout)

    def result(self, timeout: float | None = None, throw_except: bool = True) -> Any:
        """The call's result (a callable's return value); raises its CallError if it failed,
        ``WaitTimeout`` if it has not ended within ``timeout`` s."""
        self._executor._send_now(self)
        if not self._event.wait(timeout):
            raise WaitTimeout(f"call {self.call_num} ({self.function}) is still running")
        failure = self._failure()
        if failure is not None:
            if throw_except:
                raise failure
            return None
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error the call ended with, or ``None``."""
        self._executor._send_now(self)
        if not self._event.wait(timeout):
            raise WaitTimeout(f"call {self.call_num} ({self.function}) is still running")
        return self._failure()

    def add_done_callback(self, fn: Callable[[CallFuture], None]) -> None:
        """Call ``fn(future)`` when the call ends (at once if it has)."""
        with self._executor._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def __await__(self) -> Generator[Any, None, Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: CallFuture) -> None:
            loop.call_soon_threadsafe(_set_none, waiter)

        self.add_done_callback(wake)
        yield from waiter.__await__()
        return self.result()

    # ---- resolution (executor side)

    def _failure(self) -> BaseException | None:
        if self._error is None and self._value is _UNSET and self.call is not None:
            self._decode_result()
        return self._error

    def _decode_result(self) -> None:
        assert self.call is not None
        call = self.call
        if call.status != "DONE":
            self._error = call_error(call.call_num, call.func_name, call.status, call.error)
            return
        if self._decode is None:
            self._value = call.result
            return
        try:
            self._value = self._decode(call.result)
        except SerializationError as exc:
            self._error = exc

    def _settle(
        self, call: Call | None, error: BaseException | None
    ) -> list[Callable[[CallFuture], None]]:
        """Record the end; the callbacks to run (outside the lock). Caller holds the lock."""
        if self._event.is_set():
            return []
        self.call = call
        self._error = error
        self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        return callbacks


class FunctionExecutor:
    """Run work on a fum cluster with futures, in the spirit of Lithops' FunctionExecutor.

    ``fn`` is a deployed function's name (params: the data, as JSON) or a Python callable
    (shipped with cloudpickle to the built-in function, which the executor deploys on
    the runtime ``runtime`` the first time it is needed)::

        with FunctionExecutor() as fexec:
            futures = fexec.map(lambda x: x + 1, range(1000))
            print(fexec.get_result(futures))

    ``retries``: how many times a call that ends ERROR or TIMEOUT is submitted again.
    ``runtime_timeout``/``runtime_memory``: the built-in function's limits (seconds, MiB).
    ``unreachable_grace``: how long (s) waits (and submits refused a connection) keep
    retrying an api that does not answer before the calls fail with that error.
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        client: Client | None = None,
        runtime: str = "fum-python",
        runtime_image: str = "pythonruntime",
        runtime_timeout: float | None = None,
        runtime_memory: int | None = None,
        retries: int = 0,
        max_waiters: int = 4,
        wait_window: int = 1000,
        unreachable_grace: float = UNREACHABLE_GRACE_S,
        lone_call_wait: float = LONE_CALL_WAIT_S,
    ) -> None:
        self.client = client or Client(api_url, api_key, profile=profile)
        self._own_client = client is None
        # The submit and wait threads' own connections: closing them on close() cuts the
        # long polls short without touching a client the caller passed in.
        self._http = Client(settings=self.client.settings)
        self.runtime = runtime
        self.runtime_image = runtime_image
        self.runtime_timeout = runtime_timeout
        self.runtime_memory = runtime_memory
        self.retries = retries
        self.max_waiters = max(1, max_waiters)
        self.wait_window = max(1, min(wait_window, _api.MAX_BATCH))
        self.unreachable_grace = unreachable_grace
        self.lone_call_wait = lone_call_wait
        self.futures: list[CallFuture] = []
        self._specs: weakref.WeakKeyDictionary[Any, CallableSpec] = weakref.WeakKeyDictionary()
        self._last_call = ""
        self._builtin: str | None = None
        self._builtin_lock = threading.Lock()
        self._lock = threading.Lock()
        self._submit_cond = threading.Condition(self._lock)
        self._wait_cond = threading.Condition(self._lock)
        self._resolved = threading.Condition(self._lock)
        self._to_submit: deque[CallFuture] = deque()
        self._inflight: dict[int, CallFuture] = {}
        self._unclaimed: list[int] = []  # heap of call numbers nobody is waiting on
        self._idle_waiters = 0
        self._threads: list[threading.Thread] = []
        self._submitter: threading.Thread | None = None
        self._closed = False
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"FunctionExecutor({self.client.api_url!r})"

    def __enter__(self) -> FunctionExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the built-in function for callables

    @property
    def builtin_function(self) -> str:
        """The name of the built-in function (deployed now if it is not yet)."""
        return self._ensure_builtin()

    def _ensure_builtin(self) -> str:
        if self._builtin is not None:
            return self._builtin
        with self._builtin_lock:
            if self._builtin is not None:
                return self._builtin
            package = handler_package()
            limits: dict[str, Any] = {
                "timeout": self.runtime_timeout,
                "memory": self.runtime_memory,
            }
            digest = hashlib.sha256(
                package + repr((self.runtime, sorted(limits.items()))).encode()
            ).hexdigest()
            # The name carries the code and the limits: executors with other settings (or
            # another SDK version) get their own function instead of replacing this one.
            name = f"fum-python-{digest[:12]}"
            try:
                self.client.get_function(name)
            except NotFound:
                self._ensure_runtime()
                self.client.deploy_function(
                    name,
                    package,
                    runtime=self.runtime,
                    filename="fum-python.tar.gz",
                    timeout=self.runtime_timeout,
                    memory=self.runtime_memory,
                )
            self._builtin = name
            return name

    def _ensure_runtime(self) -> None:
        try:
            runtime = self.client.get_runtime(self.runtime)
        except NotFound:
            self.client.put_runtime(self.runtime, self.runtime_image, HANDLER_RUN)
            return
        if runtime.run.strip() != HANDLER_RUN:
            raise FumError(
                f"runtime {self.runtime!r} runs {runtime.run!r}, but Python callables need "
                f"{HANDLER_RUN!r}: pass another runtime= to the executor"
            )

    # ---- submitting

    def _prepare(
        self,
        fn: str | Callable[..., Any],
        include_modules: Iterable[ModuleType],
    ) -> tuple[str, CallableSpec | None]:
        if isinstance(fn, str):
            return fn, None
        if not callable(fn):
            raise TypeError(f"fn must be a function name or a callable, not {type(fn).__name__}")
        modules = tuple(include_modules)
        spec = None
        if not modules:
            with contextlib.suppress(TypeError):  # not weak-referenceable, or unhashable
                spec = self._specs.get(fn)
        if spec is None:
            spec = callable_spec(fn, modules)
            if not modules:
                # Pickled once per function object, as Ray does at @ray.remote: a function
                # called again ships the closure and globals it had the first time.
                with contextlib.suppress(TypeError):
                    self._specs[fn] = spec
        return self._ensure_builtin(), spec

    def _new(
        self, function: str, spec: CallableSpec | None, data: Any, extra_args: Any, retries: int
    ) -> CallFuture:
        if spec is None:
            if extra_args is not None:
                raise TypeError("extra_args applies to Python callables, not to deployed functions")
            params = encode_json_params(data, function)
            return CallFuture(self, function, params, None, retries)
        args, kwargs = spec.split(data, extra_args)
        return CallFuture(self, function, spec.params(args, kwargs), decode_result, retries)

    def call_async(
        self,
        fn: str | Callable[..., Any],
        data: Any = NO_DATA,
        *,
        extra_args: Any = None,
        retries: int | None = None,
        include_modules: Iterable[ModuleType] = (),
    ) -> CallFuture:
        """Start one call: ``fn(data)`` (a tuple is the arguments, a dict of parameter names
        the keyword arguments) or the deployed function ``fn`` with ``data`` as params."""
        function, spec = self._prepare(fn, include_modules)
        future = self._new(
            function, spec, data, extra_args, self.retries if retries is None else retries
        )
        self._last_call = "call_async"
        self._enqueue([future])
        return future

    def map(
        self,
        map_function: str | Callable[..., Any],
        map_iterdata: Iterable[Any],
        *,
        extra_args: Any = None,
        retries: int | None = None,
        include_modules: Iterable[ModuleType] = (),
    ) -> list[CallFuture]:
        """One call per item of ``map_iterdata``; the futures in the items' order."""
        function, spec = self._prepare(map_function, include_modules)
        tries = self.retries if retries is None else retries
        futures = [self._new(function, spec, item, extra_args, tries) for item in map_iterdata]
        self._last_call = "map"
        self._enqueue(futures)
        return futures

    def map_reduce(
        self,
        map_function: str | Callable[..., Any],
        map_iterdata: Iterable[Any],
        reduce_function: str | Callable[..., Any],
        *,
        extra_args: Any = None,
        retries: int | None = None,
        include_modules: Iterable[ModuleType] = (),
    ) -> list[CallFuture]:
        """``map``, then one call of ``reduce_function(results)`` with the map's results in
        order, submitted by this executor when the last map call ends. Returns the map
        futures then the reduce future; ``get_result`` of that list is the reduce's result.
        A failed map call fails the reduce with the map call's error."""
        map_futures = self.map(
            map_function,
            map_iterdata,
            extra_args=extra_args,
            retries=retries,
            include_modules=include_modules,
        )
        reduce_name, spec = self._prepare(reduce_function, include_modules)
        tries = self.retries if retries is None else retries
        reduce_future = CallFuture(
            self, reduce_name, b"", None if spec is None else decode_result, tries
        )
        self.futures.append(reduce_future)
        for f in map_futures:
            f._produce_output = False
        self._last_call = "map_reduce"
        remaining = [len(map_futures)]
        counter_lock = threading.Lock()

        def start_reduce() -> None:
            try:
                results = [f.result() for f in map_futures]
                if spec is None:
                    reduce_future._params = encode_json_params(results, reduce_name)
                else:
                    reduce_future._params = spec.params((results,), {})
                self._enqueue([reduce_future], track=False)
            except BaseException as exc:  # a map call's error (or a closed executor)
                self._fail([reduce_future], exc)

        def one_done(_: CallFuture) -> None:
            with counter_lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                start_reduce()

        if not map_futures:
            start_reduce()
        for f in map_futures:
            f.add_done_callback(one_done)
        return [*map_futures, reduce_future]

    def _enqueue(self, futures: Sequence[CallFuture], track: bool = True) -> None:
        if track:
            self.futures.extend(futures)
        with self._lock:
            if self._closed:
                raise ExecutorClosed("the executor is closed")
            self._to_submit.extend(futures)
            if self._submitter is None:
                self._submitter = self._start(self._submit_loop, "fum-submit")
            self._submit_cond.notify()

    def _send_now(self, future: CallFuture) -> None:
        """Waiting for the only call not sent yet: send it from this thread (one request,
        no hand-over to the submit thread and back: a sequential caller's latency)."""
        with self._lock:
            if len(self._to_submit) != 1 or self._to_submit[0] is not future or self._closed:
                return
            self._to_submit.popleft()
        self._submit([future])

    def _start(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _submit_loop(self) -> None:
        while True:
            with self._lock:
                while not self._to_submit and not self._closed:
                    self._submit_cond.wait()
                if self._closed:
                    return
                batch: list[CallFuture] = []
                size = 0
                while self._to_submit and len(batch) < _api.MAX_BATCH:
                    size += len(self._to_submit[0]._params) + 64
                    if batch and size > MAX_BATCH_BYTES:
                        break
                    batch.append(self._to_submit.popleft())
            self._submit(batch)

    def _send(self, batch: list[CallFuture], key: str) -> list[int] | Call:
        """Create the calls: one POST /v1/calls; a lone call as a short blocking invoke,
        which answers the finished call itself when it is quick (one request, not two)."""
        if len(batch) == 1 and self.lone_call_wait > 0:
            future = batch[0]
            return self._http.invoke_encoded(
                future.function,
                future._params,
                blocking=True,
                timeout=self.lone_call_wait,
                idempotency_key=key,
            )
        calls = [(f.function, f._params) for f in batch]
        return self._http.create_calls_encoded(calls, idempotency_key=key)

    def _submit(self, batch: list[CallFuture]) -> None:
        deadline = time.monotonic() + self.unreachable_grace
        # One key for every attempt at this batch: a repeat the api took already is
        # answered with the calls it made then, so nothing runs twice.
        key = self._http.new_idempotency_key()
        while True:
            try:
                sent = self._send(batch, key)
                break
            except (NotFound, BadRequest) as exc:
                functions = list(dict.fromkeys(f.function for f in batch))
                if len(functions) > 1:
                    # All or none per request: find which function's calls are at fault.
                    for function in functions:
                        self._submit([f for f in batch if f.function == function])
                    return
                self._fail(batch, exc)
                return
            except TooManyRequests as exc:
                # The cluster is full (all or none per request): smaller batches fit sooner;
                # a single call waits for room as long as the api asks, the api being up.
                if len(batch) > 1:
                    half = len(batch) // 2
                    self._submit(batch[:half])
                    self._submit(batch[half:])
                    return
                if self._stop.wait(exc.retry_after or 1.0):
                    self._fail(batch, ExecutorClosed("the executor was closed"))
                    return
                deadline = time.monotonic() + self.unreachable_grace
            except ApiUnreachable as exc:
                # Sent again, with the same key, until the deadline: a create the api may
                # have stored is answered with its calls, never made twice.
                if self._stop.is_set():  # close() cut the connection under this request
                    self._fail(batch, ExecutorClosed("the executor was closed"))
                    return
                if time.monotonic() > deadline:
                    self._fail(batch, exc)
                    return
                self._stop.wait(0.2)  # back off while the api is away, up to the deadline
            except ApiError as exc:
                self._fail(batch, exc)
                return
        if isinstance(sent, Call):
            future = batch[0]
            with self._lock:
                future.call_nums.append(sent.call_num)
                self._inflight[sent.call_num] = future
                if not sent.final:
                    heapq.heappush(self._unclaimed, sent.call_num)
                    self._wake_waiters()
            if sent.final:
                self._finish([sent], [])
            return
        with self._lock:
            for future, num in zip(batch, sent, strict=True):
                future.call_nums.append(num)
                self._inflight[num] = future
                heapq.heappush(self._unclaimed, num)
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Hand unwatched calls to an idle waiter, or start one. Caller holds the lock."""
        if not self._unclaimed or self._closed:
            return
        if self._idle_waiters:
            self._wait_cond.notify()
        elif sum(t.name == "fum-wait" for t in self._threads) < self.max_waiters:
            self._start(self._wait_loop, "fum-wait")

    def _fail(self, futures: Iterable[CallFuture], error: BaseException) -> None:
        settled = []
        with self._lock:
            for future in futures:
                settled.append((future, future._settle(None, error)))
            self._resolved.notify_all()
        for future, callbacks in settled:
            _run(callbacks, future)

    # ---- waiting (executor side)

    def _claim(self) -> list[int] | None:
        """The oldest unwatched calls (None: the executor is closed). Caller holds the lock."""
        while True:
            while not self._unclaimed and not self._closed:
                self._idle_waiters += 1
                self._wait_cond.wait()
                self._idle_waiters -= 1
            if self._closed:
                return None
            nums: list[int] = []
            while self._unclaimed and len(nums) < self.wait_window:
                num = heapq.heappop(self._unclaimed)
                if num in self._inflight:
                    nums.append(num)
            if nums:
                self._wake_waiters()  # more left: let another waiter take them
                return nums

    def _wait_loop(self) -> None:
        failing: list[float] = []  # when the api started failing, if it is failing

        def ask(nums: list[int], timeout: float, when: _api.ReturnWhen) -> WaitResult | None:
            """One wait request; None when it failed (its calls released or failed)."""
            try:
                answer = self._http.wait_calls(nums, timeout=timeout, return_when=when)
                failing.clear()
                return answer
            except (ApiUnreachable, ServerError) as exc:
                if self._stop.is_set():
                    return None
                now = time.monotonic()
                failing[:] = failing or [now]
                if now - failing[0] > self.unreachable_grace:
                    with self._lock:
                        lost = [self._inflight.pop(n) for n in nums if n in self._inflight]
                    self._fail(lost, exc)
                    return None
                self._release(nums)
                self._stop.wait(0.2)  # back off while the api is away, up to the grace
                return None
            except ApiError as exc:  # the calls are gone (a wiped db): nothing to wait for
                with self._lock:
                    lost = [self._inflight.pop(n) for n in nums if n in self._inflight]
                self._fail(lost, exc)
                return None

        while not self._stop.is_set():
            with self._lock:
                nums = self._claim()
            if nums is None:
                return
            answer = ask(nums, LONG_POLL_S, "FIRST_COMPLETED")
            if answer is None:
                continue
            if len(answer.pending) < LINGER_MIN:
                self._finish(answer.done, answer.pending)
                continue
            # Many calls still running and some just ended: more will end in a moment.
            # Collect them for LINGER_S in one more request, instead of one request per
            # call ending: each wait costs the api (and the CPU the calls run on) the same.
            self._finish(answer.done, [])
            more = ask(answer.pending, LINGER_S, "ALL_COMPLETED")
            if more is not None:
                self._finish(more.done, more.pending)

    def _release(self, nums: Iterable[int]) -> None:
        with self._lock:
            for num in nums:
                if num in self._inflight:
                    heapq.heappush(self._unclaimed, num)
            self._wake_waiters()

    def _finish(self, done: list[Call], pending: list[int]) -> None:
        settled = []
        again = []
        with self._lock:
            for call in done:
                future = self._inflight.pop(call.call_num, None)
                if future is None or call.status not in FINAL_STATUSES:
                    continue
                if call.status != "DONE" and future._retries_left > 0 and not self._closed:
                    future._retries_left -= 1
                    again.append(future)
                    continue
                settled.append((future, future._settle(call, None)))
            for num in pending:
                if num in self._inflight:
                    heapq.heappush(self._unclaimed, num)
            self._wake_waiters()
            if settled:
                self._resolved.notify_all()
        if again:
            try:
                self._enqueue(again, track=False)
            except ExecutorClosed as exc:
                self._fail(again, exc)
        for future, callbacks in settled:
            _run(callbacks, future)

    # ---- waiting (user side)

    def _futures(self, fs: CallFuture | Iterable[CallFuture] | None) -> list[CallFuture]:
        if fs is None:
            return list(self.futures)
        if isinstance(fs, CallFuture):
            return [fs]
        return list(fs)

    def wait(
        self,
        fs: CallFuture | Iterable[CallFuture] | None = None,
        throw_except: bool = True,
        return_when: int = ALL_COMPLETED,
        download_results: bool = False,
        timeout: float | None = None,
        *,
        threadpool_size: int | None = None,
        wait_dur_sec: float | None = None,
        show_progressbar: bool = False,
    ) -> tuple[list[CallFuture], list[CallFuture]]:
        """Wait for calls (default: every call of this executor): ``ALL_COMPLETED``,
        ``ANY_COMPLETED``, or ``ALWAYS`` (no wait). Returns ``(done, not_done)`` once
        that holds or ``timeout`` s passed; with ``throw_except`` a failed call's error
        is raised. Lithops' ``download_results``, ``threadpool_size``, ``wait_dur_sec``
        and ``show_progressbar`` are accepted and have no effect here (results come with
        the calls' ends; nothing polls storage)."""
        futures = self._futures(fs)
        if return_when not in (ALL_COMPLETED, ANY_COMPLETED, ALWAYS):
            raise ValueError("return_when must be ALL_COMPLETED, ANY_COMPLETED or ALWAYS")
        deadline = None if timeout is None else time.monotonic() + timeout
        if return_when == ALL_COMPLETED:
            for future in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not future._event.wait(left):
                    break
        elif return_when == ANY_COMPLETED and futures:
            with self._lock:
                while not any(f._event.is_set() for f in futures):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._resolved.wait(left)
        done = [f for f in futures if f.done()]
        not_done = [f for f in futures if not f.done()]
        if throw_except:
            for future in done:
                failure = future._failure()
                if failure is not None:
                    raise failure
        return done, not_done

    def get_result(
        self,
        fs: CallFuture | Iterable[CallFuture] | None = None,
        throw_except: bool = True,
        timeout: float | None = None,
        *,
        threadpool_size: int | None = None,
        wait_dur_sec: float | None = None,
        show_progressbar: bool = False,
    ) -> Any:
        """The results of the calls (default: those of this executor not read yet), in order.

        A single future gives its result; a ``map_reduce`` list gives the reduce's result.
        Raises the first failed call's error (``throw_except``; else its result is None),
        ``WaitTimeout`` when not every call ended within ``timeout`` s.
        """
        if isinstance(fs, CallFuture):
            return fs.result(timeout=timeout, throw_except=throw_except)
        unread = fs is None
        futures = [f for f in self.futures if not f._read] if unread else self._futures(fs)
        _, not_done = self.wait(futures, throw_except=False, timeout=timeout)
        if not_done:
            raise WaitTimeout(
                f"{len(not_done)} of {len(futures)} calls have not finished within {timeout:g}s"
            )
        outputs = [f for f in futures if f._produce_output]
        results = [f.result(throw_except=throw_except) for f in outputs]
        if unread:
            for f in futures:
                f._read = True
            if len(results) == 1 and self._last_call != "map":
                return results[0]
        elif len(outputs) == 1 and len(futures) > 1:
            return results[0]  # map futures + the reduce future
        return results

    # ---- pictures

    def plot(
        self, fs: Sequence[CallFuture] | None = None, dst: str | Path | None = None
    ) -> list[Path]:
        """PNGs of a run (as Lithops' ``plot``): ``<dst>_timeline.png``, each call's time
        queued, setting up and running, and ``<dst>_histogram.png``, their durations.
        ``fs``: the futures to draw (default: every one this executor made); ``dst``:
        default ``fum-plots/<time>``. Needs matplotlib (the ``plot`` extra)."""
        from . import plots

        futures = self.futures if fs is None else fs
        calls = [f.call for f in futures if f.call is not None]
        when = time.strftime("%Y%m%d-%H%M%S")
        return plots.plot(calls, dst or Path("fum-plots") / when, title=f"{len(calls)} calls")

    # ---- closing

    def close(self) -> None:
        """Stop the executor's threads; calls not finished yet fail here with
        ExecutorClosed (they go on in the cluster)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._submit_cond.notify_all()
            self._wait_cond.notify_all()
            waiting = [f for f in self.futures if not f.done()]
        self._http.close()  # unblocks the long polls at once
        for thread in self._threads:
            thread.join(timeout=5)
        if self._own_client:
            self.client.close()
        self._fail(waiting, ExecutorClosed("the executor was closed before the call finished"))


def _set_none(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _run(callbacks: list[Callable[[CallFuture], None]], future: CallFuture) -> None:
    for callback in callbacks:
        callback(future)
