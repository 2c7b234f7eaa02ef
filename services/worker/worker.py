"""The worker process: registers with the api, keeps the pool, writes results."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import aiohttp
import msgspec
import structlog
import zmq

from services.common import metrics
from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.errors import FumError, NotFound, Unavailable, UnknownNode
from services.common.models import Call, CallUpdate, Function, NewCall, Session
from services.common.node_protocol import (
    NODE_PROTOCOL,
    BuildRequested,
    CallFinished,
    CatalogSynced,
    Dispatch,
    FunctionRemoved,
    FunctionSynced,
    HeartbeatAck,
    HoldCalls,
    PlaceCalls,
    Register,
    Registered,
    RuntimeRemoved,
    RuntimeSynced,
    SessionEnded,
)
from services.common.pool_protocol import Outcome
from services.common.protocol import Message
from services.common.rpc import Client, close_context
from services.common.tasks import Background, retrying
from services.miniworker.settings import PASSTHROUGH
from services.triggers.coordinators import RUN_PREFIX, Suspension, run_of, suspension_of
from services.workflows.continuation import Continuations, Verdict

from .builds import Builder
from .packages import PackageCache
from .pool import Job, Pool
from .settings import WorkerSettings

log = structlog.get_logger()

RESULT_DEADLINE = 120.0  # seconds a result waits for a db that does not answer (a restart)
STEP_NUMBERS = 256  # call numbers reserved at a time for coordinators' lone steps


@dataclasses.dataclass
class _Deferred:
    """A coordinator's run whose end is written with its lone step's first write."""

    final: Call
    update: CallUpdate


class Worker:
    def __init__(self, settings: WorkerSettings, base_env: dict[str, str]) -> None:
        self.settings = settings
        self._base_env = base_env
        self._registered = asyncio.Event()
        self._background = Background()
        self._running_writes: dict[int, asyncio.TimerHandle] = {}
        # Coordinators' lone steps run here at once (``_run_lone_step``): the runs' ends, by
        # the step's call number; and numbers set aside in the db for those calls.
        self._deferred: dict[int, _Deferred] = {}
        self._step_numbers = range(0)
        self._reserving = False
        self._handlers = {
            Dispatch: self._on_dispatch,
            CatalogSynced: lambda m: self.pool.sync(m.runtimes, m.functions),
            RuntimeSynced: lambda m: self.pool.put_runtime(m.runtime),
            RuntimeRemoved: lambda m: self.pool.remove_runtime(m.name),
            FunctionSynced: lambda m: self.pool.put_function(m.function),
            FunctionRemoved: lambda m: self.pool.remove_function(m.name),
            BuildRequested: lambda m: self._background.spawn(self._build(m)),
        }

    async def serve(self) -> None:
        s = self.settings
        if s.driver == "docker":
            await self._prepare_docker()
        keys = ClusterKeys.open(s.keys_dir)
        ctx: zmq.Context = zmq.Context()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(close_context, ctx)
            headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else None
            session = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
            self.db = DbClient(ctx, s.db_url, keys, timeout=5.0, on_placed=self._place)
            stack.push_async_callback(self.db.close)
            self.steps = Continuations(self.db, self._place_calls, self._session_ended)
            # a container takes a link farm of its files made ahead (docs/BUILDS.md)
            spares = 2 if s.driver == "docker" else 0
            packages = PackageCache(Path(s.node_dir), s.api_url, session, s, spares)
            self.pool = Pool(s, ctx, packages, self._base_env, self._on_start, self._on_outcome)
            passthrough = {k: v for k, v in self._base_env.items() if k in PASSTHROUGH}
            self.builder = Builder(s, packages, passthrough)
            stack.push_async_callback(self.pool.close)
            self.api = Client(
                ctx,
                s.api_endpoint,
                NODE_PROTOCOL,
                keys=keys,
                identity=str(s.node_id).encode(),
                timeout=max(3 * s.heartbeat_interval, 1.0),
                on_event=self._on_event,
            )
            stack.push_async_callback(self.api.close)
            stack.push_async_callback(self._background.close)
            metrics.serve(s.metrics_port, s.metrics_host, f"worker-{s.node_id}")
            log.info("worker.started", node=s.node_id, preload=s.preload, pool=self.pool.endpoint)
            await asyncio.gather(self.pool.serve(), self._keep_registered())

    async def _prepare_docker(self) -> None:
        """The containers' network exists, and none of a previous run of this node is left."""
        import aiodocker

        from services.miniworker.docker_driver import ensure_network, remove_orphans

        async with aiodocker.Docker() as docker:
            await ensure_network(docker, self.settings.docker_network)
            removed = await remove_orphans(
                docker, self.settings.docker_network, self.settings.node_id
            )
        if removed:
            log.info("worker.orphans_removed", containers=removed)

    # ---- the api link

    async def _keep_registered(self) -> None:
        """Register, then heartbeat; register again whenever the api forgets this node."""
        s = self.settings
        while True:
            if not self._registered.is_set():
                try:
                    await self.api.request(
                        Register(
                            node_id=s.node_id,
                            capacity=s.capacity,
                            preload=s.preload,
                            driver=s.driver,
                            running=self.pool.running(),
                        ),
                        Registered,
                    )
                except Unavailable:
                    log.info("worker.api_unreachable", endpoint=s.api_endpoint)
                    continue
                self._registered.set()
                log.info("worker.registered", node=s.node_id)
            await asyncio.sleep(s.heartbeat_interval)
            try:
                await self.api.request(self.pool.load(), HeartbeatAck)
            except (Unavailable, UnknownNode) as exc:
                log.warning("worker.heartbeat_failed", error=str(exc))
                self._registered.clear()

    def _on_event(self, message: Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            log.error("worker.unexpected", msg_type=message.msg_type)
            return
        handler(message)

    def _on_dispatch(self, message: Dispatch) -> None:
        call = message.call
        function = self.pool.functions.get(call.func_name)
        if function is None:  # registered after this node's catalogue was sent: ask the db
            self._background.spawn(self._learn_then_submit(message))
            return
        if function.workflow is not None:
            # A workflow step that may be a duplicate looks for its checkpoint before it
            # runs (services/workflows); the first dispatch of its own call runs at once.
            verdict = self.steps.before(function.workflow, call)
            if verdict is None:
                self._background.spawn(self._look_then_run(message, function))
            else:
                self._run_step(message, function, verdict)
            return
        self._submit(message, function)

    async def _look_then_run(self, message: Dispatch, function: Function) -> None:
        assert function.workflow is not None
        try:
            verdict = await self.steps.look(function.workflow, message.call)
        except FumError as exc:
            log.error("worker.step_look_up_failed", call=message.call.call_num, error=str(exc))
            return  # the call stays unfinished: the api dispatches it again when due
        self._run_step(message, function, verdict)

    def _run_step(self, message: Dispatch, function: Function, verdict: Verdict) -> None:
        if verdict.run:
            self._submit(message, function)
            return
        outcome = Outcome(
            call_num=message.call.call_num,
            status=verdict.status,
            result=verdict.result,
            error=verdict.error,
        )
        self._finish(message, outcome, as_step=False)

    def _place_calls(self, calls: list[Call]) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.api.send_event(PlaceCalls(calls=calls))

    def _session_ended(self, session: Session) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.api.send_event(SessionEnded(session=session.id, status=session.status))

    def _submit(self, message: Dispatch, function: Function) -> None:
        archive = function.setup_archive()
        if archive is None:  # its build is not ready: the pool holds the call until it is
            self.pool.submit(self._job(message, function, None))
            return
        package = self.pool.packages.cached(archive)
        if package is not None:
            self.pool.submit(self._job(message, function, package))
        else:
            self._background.spawn(self._fetch_then_submit(message, function, archive))

    async def _build(self, message: BuildRequested) -> None:
        finished = await self.builder.build(message)
        with contextlib.suppress(zmq.ZMQError):
            self.api.send_event(finished)

    def _job(self, message: Dispatch, function: Function, package: Path | None) -> Job:
        return Job(
            message.call,
            message.timeout,
            function,
            package,
            self.settings.retries,
            early=message.early,
            stored=message.stored,
        )

    async def _learn_then_submit(self, message: Dispatch) -> None:
        """A call of a function this node was not told of: the db is the catalogue's
        source, so the function (and its runtime, if new here) is read from it."""
        call = message.call
        try:
            function = await retrying(
                lambda: self.db.get_function(call.func_name), RESULT_DEADLINE, "get function"
            )
            if function.runtime not in self.pool.runtimes:
                runtime = await retrying(
                    lambda: self.db.get_runtime(function.runtime), RESULT_DEADLINE, "get runtime"
                )
                self.pool.put_runtime(runtime)
        except FumError as exc:
            outcome = Outcome(call_num=call.call_num, status="ERROR", error=str(exc))
            self._finish(message, outcome)
            return
        log.info("worker.function_learned", function=function.name, call=call.call_num)
        self.pool.put_function(function)
        self._on_dispatch(message)  # known now: dispatched as any call of it (a step looks)

    async def _fetch_then_submit(self, message: Dispatch, function: Function, archive: str) -> None:
        call = message.call
        try:
            package = await self.pool.packages.get(archive)
        except FumError as exc:
            outcome = Outcome(call_num=call.call_num, status="ERROR", error=str(exc))
            self._finish(message, outcome)
            return
        self.pool.submit(self._job(message, function, package))

    # ---- results

    def _on_start(self, job: Job) -> None:
        """Say RUNNING in the db, unless the call is over first (most are: it saves a write)."""
        update = CallUpdate(
            call_num=job.call.call_num,
            status="RUNNING",
            node_id=self.settings.node_id,
            attempts=job.call.attempts,
            started_at=time.time(),
            new=_carried(job),
        )
        self._running_writes[job.call.call_num] = asyncio.get_running_loop().call_later(
            self.settings.running_delay, self._write_running, update
        )

    def _write_running(self, update: CallUpdate) -> None:
        self._running_writes.pop(update.call_num, None)
        self._background.spawn(self._write(update))
        self._write_deferred(update.call_num)

    def _write_deferred(self, step: int) -> None:
        """The end of the run whose lone step is ``step``, written right after the step's
        write (its RUNNING or its end): in the same db request, one transaction. After it,
        as the db must find the call made when it reads the run's suspension (or it would
        make the step's call itself)."""
        deferred = self._deferred.pop(step, None)
        if deferred is not None:
            self._background.spawn(self._report(deferred.final, deferred.update, early=False))

    def _on_outcome(self, job: Job, outcome: Outcome) -> None:
        if outcome.retryable and job.retries > 0:
            # The sandbox died under the call (not the call's own error or timeout): run it
            # once more on a fresh one, counting the attempt.
            log.info("worker.retrying", call=job.call.call_num, error=outcome.error)
            call = msgspec.structs.replace(job.call, attempts=job.call.attempts + 1)
            # Alone: in a batch, the call blamed may be one whose report died with the
            # process of another; run alone, it cannot be blamed for another twice.
            retry = dataclasses.replace(job, call=call, retries=job.retries - 1, alone=True)
            self.pool.submit(retry)
            return
        self._finish(job, outcome)

    def _finish(self, source: Job | Dispatch, outcome: Outcome, as_step: bool = True) -> None:
        """Write a call's end and tell the api; a workflow step's end goes with its
        checkpoint and continuations (``as_step``: it ran, or was meant to)."""
        call = source.call
        pending = self._running_writes.pop(call.call_num, None)
        if pending is not None:
            pending.cancel()
        finished = outcome.finished_at or time.time()
        final = msgspec.structs.replace(
            call,
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            node_id=self.settings.node_id,
            start=outcome.start,
            init_ms=outcome.init_ms,
            started_at=outcome.started_at or finished,
            finished_at=finished,
        )
        update = CallUpdate.storing(final, logs=outcome.logs, new=_carried(source))
        function = self.pool.functions.get(call.func_name)
        if as_step and function is not None and function.workflow is not None:
            self._background.spawn(self._report_step(function, final, update))
            return
        if self._run_lone_step(final, update):
            return
        if source.early:  # nothing else can have run it: the api hears at once, the db follows
            self._tell_api(final)
        self._background.spawn(self._report(final, update, source.early))
        self._write_deferred(call.call_num)

    def _run_lone_step(self, final: Call, update: CallUpdate) -> bool:
        """A coordinator's run that ends waiting for one new step of one call: that call
        runs here at once, numbered here, and the run's end is written with the call's
        first write, in one db transaction (the db would otherwise store the run's end,
        make the call, and hand it back: a trip and a commit more). Only a run's first
        attempt (a later one may repeat a step the db holds), and only when an idle
        sandbox here is set up for the step's function; whether it did."""
        if final.status != "DONE" or final.attempts != 1 or run_of(final.uuid) is None:
            return False
        suspension = suspension_of(final.result)
        if not isinstance(suspension, Suspension) or len(suspension.steps) != 1:
            return False
        (step,) = suspension.steps
        if len(step.params) != 1 or suspension.wait != [step.seq]:
            return False
        execution, _ = run_of(final.uuid) or ("", 0)
        call = Call(
            call_num=0,
            uuid=f"{RUN_PREFIX}{execution}.s{step.seq}.0",  # as the db names it
            func_name=step.function,
            params=bytes(step.params[0]),
            created_at=time.time(),
            caller=final.caller,  # the steps are the execution's starter's calls
        )
        function = self._function_here(call)
        if function is None or not self._step_numbers:
            if not self._step_numbers:
                self._reserve_step_numbers()
            return False
        num, self._step_numbers = self._step_numbers[0], self._step_numbers[1:]
        call = msgspec.structs.replace(call, call_num=num)
        self._deferred[num] = _Deferred(final, update)
        with contextlib.suppress(zmq.ZMQError):  # the api places it again if this node dies
            self.api.send_event(HoldCalls(calls=[call]))
        held = msgspec.structs.replace(call, attempts=1)
        self._on_dispatch(Dispatch(call=held, timeout=function.limits.timeout, stored=False))
        return True

    def _reserve_step_numbers(self) -> None:
        if self._reserving:
            return
        self._reserving = True

        async def reserve() -> None:
            try:
                first = await self.db.reserve_call_nums(STEP_NUMBERS)
                self._step_numbers = range(first, first + STEP_NUMBERS)
            except FumError as exc:
                log.warning("worker.reserve_failed", error=str(exc))
            finally:
                self._reserving = False

        self._background.spawn(reserve())

    async def _report_step(self, function: Function, final: Call, update: CallUpdate) -> None:
        """The checkpoint first, with what the step sends on; then the api hears."""
        assert function.workflow is not None
        try:
            stored = await self.steps.after(function.workflow, final, update)
        except NotFound as exc:  # its session is not in the db: a plain call's end, then
            log.warning("worker.step_without_session", call=final.call_num, error=exc.message)
            await self._report(final, update, early=False)
            return
        except FumError as exc:
            # Left unfinished in the db: the api dispatches it again, and that run either
            # finds the checkpoint (if this request was done after all) or writes it.
            log.error("worker.step_finish_failed", call=final.call_num, error=str(exc))
            return
        if stored is None:  # not a session's call: a plain one
            await self._report(final, update, early=False)
            return
        self._tell_api(stored)

    async def _write(self, update: CallUpdate) -> bool:
        try:
            # Idempotent: a final update applies once, and a repeat reports it did not.
            return await retrying(
                lambda: self.db.update_call(update), RESULT_DEADLINE, "update call"
            )
        except FumError as exc:
            log.error("worker.db_write_failed", call=update.call_num, error=str(exc))
            return False

    async def _report(self, final: Call, update: CallUpdate, early: bool) -> None:
        """Write the db, and tell the api: after the write for a call dispatched more than
        once (another run may have finished first: the api hears what the db kept)."""
        if early:
            if not await self._write(update):
                log.error("worker.early_result_not_stored", call=final.call_num)
            return
        if await self._write(update):
            self._tell_api(final)
            return
        # Another run of this call (dispatched again after a node was lost) finished first:
        # the api hears of the result that is stored, not of this one.
        try:
            stored = await retrying(
                lambda: self.db.get_call(final.call_num), RESULT_DEADLINE, "get call"
            )
        except FumError as exc:
            log.error("worker.db_read_failed", call=final.call_num, error=str(exc))
            return
        self._tell_api(stored)

    def _place(self, calls: list[Call]) -> None:
        """Hand the api the calls the db made for triggers' actions (a coordinator's
        steps, its next run); the api's sweep places them if this is lost. A lone one
        that an idle sandbox here is set up for runs here at once (the api is told it
        holds it): a coordinator's chain of steps saves the trip through the api."""
        here = self._function_here(calls[0]) if len(calls) == 1 else None
        with contextlib.suppress(zmq.ZMQError):
            self.api.send_event(HoldCalls(calls=calls) if here else PlaceCalls(calls=calls))
        if here is not None:
            call = msgspec.structs.replace(calls[0], attempts=calls[0].attempts + 1)
            self._on_dispatch(Dispatch(call=call, timeout=here.limits.timeout))

    def _function_here(self, call: Call) -> Function | None:
        """The call's function, if this node may run the call at once: registered, an
        idle sandbox set up for it, and no cluster-wide concurrency limit (the api's)."""
        function = self.pool.functions.get(call.func_name)
        if (
            function is None
            or function.limits.concurrency is not None
            or not self._registered.is_set()
            or not self.pool.has_idle(function.name)
        ):
            return None
        return function

    def _tell_api(self, call: Call) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.api.send_event(CallFinished(call=call))


def _carried(source: Job | Dispatch) -> NewCall | None:
    """What the call's db writes carry for the db to create it: the call itself, unless
    the api stored it already (``Dispatch.stored``)."""
    return None if source.stored else NewCall.of(source.call)
