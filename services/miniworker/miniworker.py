"""The miniworker: one sandbox, FUM with it, one call at a time for its worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgspec
import structlog
import zmq

from services.common.errors import FumError
from services.common.models import Call, Function, Runtime
from services.common.pool_protocol import (
    POOL_PROTOCOL,
    Alive,
    CallDone,
    Outcome,
    Prepare,
    PrepareFailed,
    Ready,
    Run,
    Stop,
)
from services.common.protocol import Message
from services.common.rpc import Channel, make_socket

from .fum_host import CallFailed, FumHost
from .sandbox import Driver, Sandbox, SandboxFailed, clear, tail
from .settings import MiniworkerSettings

log = structlog.get_logger()


async def open_driver(settings: MiniworkerSettings, passthrough_env: dict[str, str]) -> Driver:
    """The sandbox driver the worker chose for this node."""
    if settings.driver == "docker":
        from .docker_driver import DockerDriver

        return await DockerDriver.open(settings)
    from .process_driver import ProcessDriver

    return ProcessDriver(
        Path(settings.sandbox_dir), Path(settings.node_dir), passthrough_env, settings
    )


def _read_result(output_dir: Path) -> bytes | None:
    """``result.json`` as JSON text; text that is not JSON becomes a JSON string."""
    try:
        data = (output_dir / "result.json").read_bytes()
    except FileNotFoundError:
        return None
    return _as_json(data)


def _as_json(data: bytes) -> bytes:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return msgspec.json.encode(data.decode("utf-8", "replace"))
    return data.strip()


class _First(NamedTuple):
    """How a Run's first call started (the set-up it waited for), and when."""

    start: str = "warm"
    init_ms: float = 0.0
    started_at: float = 0.0


class Miniworker:
    def __init__(self, settings: MiniworkerSettings, driver: Driver) -> None:
        self.settings = settings
        self._driver = driver
        self._ctx: zmq.Context = zmq.Context.instance()
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()  # the worker's messages, in order
        self._channel: Channel | None = None
        self._sandbox: Sandbox | None = None
        self._started = False  # the sandbox exists, generic or not
        self._function: Function | None = None  # what it is set up for
        self._host: FumHost | None = None  # FUM with the launched run command
        self._exited: asyncio.Future[Any] | None = None  # ends when that command exits
        self._handlers = {Prepare: self._on_prepare, Run: self._on_run}

    async def serve(self) -> None:
        """Talk to the worker until it says Stop (or the process is told to stop)."""
        sock = make_socket(self._ctx, zmq.DEALER, self.settings.mw_id.encode())
        sock.connect(self.settings.worker_endpoint)
        self._channel = Channel(sock, lambda frames: self._inbox.put_nowait(frames[-1]), "worker")
        alive = asyncio.get_running_loop().create_task(self._beat())
        try:
            self._send(Ready())
            while True:
                payload = await self._inbox.get()
                try:
                    message = POOL_PROTOCOL.decode(payload)
                except FumError as exc:
                    log.error("miniworker.bad_message", error=str(exc))
                    continue
                if isinstance(message, Stop):
                    return
                handler = self._handlers.get(type(message))
                if handler is None:
                    log.error("miniworker.unexpected", msg_type=message.msg_type)
                    continue
                await handler(message)  # type: ignore[operator]
        finally:
            alive.cancel()
            await self.close()

    async def close(self) -> None:
        self._close_host()
        if self._sandbox is not None:
            await self._sandbox.destroy()
            self._sandbox = None
        if self._channel is not None:
            self._channel.close()

    def _send(self, message: Message) -> None:
        assert self._channel is not None
        self._channel.send([POOL_PROTOCOL.encode(message)])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alive_interval)
            self._send(Alive())

    def _ready(self) -> Ready:
        runtime = self._sandbox.runtime.name if self._sandbox and self._started else None
        function = self._function
        return Ready(
            runtime=runtime,
            function=function.name if function else None,
            sha256=function.sha256 if function else None,
        )

    # ---- set-up steps

    async def _start(self, runtime: Runtime, function: Function | None) -> None:
        if self._sandbox is not None:
            await self._reset()
        self._sandbox = self._driver.sandbox(runtime, function.limits if function else None)
        await self._sandbox.start()
        self._started = True

    def _close_host(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None
        if self._exited is not None:
            self._exited.cancel()
            self._exited = None

    async def _reset(self) -> None:
        self._close_host()
        if self._sandbox is not None:
            await self._sandbox.destroy()
        self._sandbox, self._started, self._function = None, False, None

    async def _specialise(self, function: Function, files: Path) -> None:
        assert self._sandbox is not None
        await self._sandbox.install(function, files)
        self._function = function
        await self._launch()

    async def _launch(self) -> None:
        """Start the run command and wait for its set-up ``ok`` (or its death)."""
        sandbox = self._sandbox
        assert sandbox is not None
        self._close_host()
        host = self._host = FumHost(self._ctx, sandbox.host_bind_ip)
        env = {
            "FUM_NODE_ID": str(self.settings.node_id),
            "FUM_HOST_IP": sandbox.host_ip,
            "FUM_HOST_PORT": str(host.port),
        }
        if self.settings.keeper_hosts:
            env["FUM_KEEPER_HOSTS"] = self.settings.keeper_hosts
        if self._function is not None:  # Lambda handlers' context.function_name
            env["FUM_FUNCTION"] = self._function.name
        node_ip, node_port = await sandbox.launch(env)
        setup = asyncio.ensure_future(host.wait_setup())
        exited = asyncio.ensure_future(sandbox.exited.wait())
        done: set[asyncio.Future[Any]] = set()  # stays empty if the wait is cancelled
        try:
            done, _ = await asyncio.wait(
                {setup, exited},
                timeout=self.settings.setup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            setup.cancel()
            if setup not in done:
                exited.cancel()
        if setup in done:
            # The sandbox binds its REP before its set-up ok: connected now, the first call
            # goes at once (connected earlier, ZeroMQ would retry every 100 ms until then).
            host.connect(node_ip, node_port)
            self._exited = exited  # watched by every call of this launch
            return
        await sandbox.stop_run()
        if exited in done:
            raise SandboxFailed(
                f"{sandbox.exit_reason()} during its set-up:\n{tail(sandbox.take_output())}"
            )
        raise SandboxFailed(
            f"the function did not finish its set-up within {self.settings.setup_timeout:g}s"
        )

    async def _on_prepare(self, message: Prepare) -> None:
        try:
            if (
                not self._started
                or self._sandbox is None
                or self._sandbox.runtime.spec() != message.runtime.spec()
            ):
                await self._start(message.runtime, message.function)
            if message.function is not None and message.package is not None:
                await self._specialise(message.function, Path(message.package))
        except (FumError, OSError) as exc:
            log.warning("miniworker.prepare_failed", error=str(exc))
            await self._reset()
            self._send(PrepareFailed(error=str(exc)))
            return
        self._send(self._ready())

    # ---- calls

    def _is_warm_for(self, function: Function) -> bool:
        return (
            self._function is not None
            and self._function.name == function.name
            and self._function.sha256 == function.sha256
            and self._host is not None
        )

    async def _on_run(self, message: Run) -> None:
        calls, function = message.calls, message.function
        started_at = time.time()
        start, init_ms = "warm", 0.0
        try:
            if not self._is_warm_for(function):
                generic = (
                    self._started
                    and self._function is None
                    and self._sandbox is not None
                    and self._sandbox.runtime.spec() == message.runtime.spec()
                )
                start = "specialized" if generic else "cold"
                t0 = time.perf_counter()
                if not generic:
                    await self._start(message.runtime, function)
                await self._specialise(function, Path(message.package))
                init_ms = (time.perf_counter() - t0) * 1000
        except (FumError, OSError) as exc:
            logs = self._sandbox.take_output() if self._sandbox else ""
            await self._reset()
            failed = [
                Outcome(
                    call_num=call.call_num,
                    status="ERROR",
                    error=f"set-up failed: {exc}",
                    logs=logs,
                    start=start,
                    started_at=started_at,
                    finished_at=time.time(),
                )
                for call in calls
            ]
            self._send(CallDone(outcomes=failed))
            self._send(Ready())
            return
        first = _First(start, init_ms, started_at)
        assert self._host is not None
        healthy = None
        if self._host.inline and len(calls) > 1:
            healthy = await self._run_batch(calls, message.timeout, first)
        if healthy is None:  # one at a time
            healthy = await self._run_each(calls, message.timeout, first)
        if not healthy:
            await self._relaunch()
            self._send(self._ready())

    async def _run_each(self, calls: list[Call], timeout: float, first: _First) -> bool:
        """Run the calls one at a time over FUM; whether the sandbox is still good."""
        started_at = first.started_at
        for i, call in enumerate(calls):
            outcome, healthy = await self._exchange(
                call, timeout, first if i == 0 else _First(started_at=started_at)
            )
            rest = [] if healthy else [c.call_num for c in calls[i + 1 :]]
            self._send(
                CallDone(outcomes=[outcome], ready=healthy and i == len(calls) - 1, unrun=rest)
            )
            if not healthy:
                return False
            started_at = outcome.finished_at
        return True

    async def _run_batch(self, calls: list[Call], timeout: float, first: _First) -> bool | None:
        """Hand the calls to the sandbox in one request and report each as it ends (those
        that end together, together); whether the sandbox is still good, or None if it
        takes no batches (then nothing has run)."""
        sandbox, host = self._sandbox, self._host
        assert sandbox is not None and host is not None
        log.debug("miniworker.batch", calls=len(calls))
        answer = host.send_batch([(call.uuid, call.params) for call in calls])
        broke = await self._race(answer, timeout)
        if broke is None and not host.batch_taken(answer.result()):
            return None
        done: list[Outcome] = []
        began = first.started_at
        for i, call in enumerate(calls):
            report = host.take_report(call.uuid)
            while report is None and broke is None:
                if done:  # what has ended goes now: the rest may take a while
                    self._send(CallDone(outcomes=done))
                    done = []
                broke = await self._race(host.arrival(), began + timeout - time.time())
                report = host.take_report(call.uuid)
                if report is not None and broke == "timeout":
                    broke = None  # it made it, just
            if report is None:
                assert broke is not None
                status, error, logs, retryable = await self._broke(broke, timeout)
                done.append(
                    self._outcome(call, i, first, began, status, None, error, logs, retryable)
                )
                unrun = [c.call_num for c in calls[i + 1 :]]
                sandbox.clear_output()
                self._send(CallDone(outcomes=done, unrun=unrun))
                return False
            ended = time.time()
            status = "DONE" if report.error is None else "ERROR"
            result = _as_json(report.result) if report.result is not None else None
            logs = sandbox.take_output(report.log_position)
            done.append(self._outcome(call, i, first, began, status, result, report.error, logs))
            began = ended
        sandbox.clear_output()
        if broke is not None:  # the last call's report came, and then its process died
            await sandbox.stop_run()
        self._send(CallDone(outcomes=done, ready=broke is None))
        return broke is None

    async def _race(self, waiting: asyncio.Future[Any], timeout: float) -> str | None:
        """Wait for ``waiting`` unless the run command exits or ``timeout`` passes first:
        None, or which of those two happened ("exited", "timeout"); ``waiting`` is then
        cancelled. One future and one timer (asyncio.wait makes a set, a task and
        callbacks for each of its futures, on every call)."""
        exited = self._exited
        assert exited is not None
        if waiting.done():
            return None
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str | None] = loop.create_future()

        def settle(what: str | None) -> None:
            if not first.done():
                first.set_result(what)

        def ended(_: object) -> None:
            settle(None)

        def died(_: object) -> None:
            settle("exited")

        waiting.add_done_callback(ended)
        exited.add_done_callback(died)
        timer = loop.call_later(max(timeout, 0.0), settle, "timeout")
        try:
            how = await first
        finally:
            timer.cancel()
            exited.remove_done_callback(died)
            waiting.remove_done_callback(ended)
        if how is not None:
            waiting.cancel()
        return how

    async def _broke(self, how: str, timeout: float) -> tuple[str, str, str, bool]:
        """Stop the run command after it died ("exited") or timed out on a call: the call's
        status, error (with the tail of the output when it died), output, and whether
        another sandbox may run it again."""
        assert self._sandbox is not None
        if how == "exited":
            status, error = "ERROR", self._sandbox.exit_reason()
        else:
            status, error = "TIMEOUT", f"the call did not finish within {timeout:g}s"
        await self._sandbox.stop_run()
        logs = self._sandbox.take_output()
        if status == "ERROR" and logs.strip():
            error = f"{error}\n{tail(logs)}"
        return status, error, logs, status == "ERROR"

    @staticmethod
    def _outcome(
        call: Call,
        index: int,
        first: _First,
        began: float,
        status: str,
        result: bytes | None,
        error: str | None,
        logs: str,
        retryable: bool = False,
    ) -> Outcome:
        """The outcome of the ``index``-th call of a Run, begun at ``began`` (the first
        carries how the sandbox was started)."""
        return Outcome(
            call_num=call.call_num,
            status=status,
            result=result,
            error=error,
            logs=logs,
            start=first.start if index == 0 else "warm",
            init_ms=first.init_ms if index == 0 else 0.0,
            started_at=began,
            finished_at=time.time(),
            retryable=retryable,
        )

    async def _exchange(self, call: Call, timeout: float, first: _First) -> tuple[Outcome, bool]:
        """Run one call over FUM; return its outcome and whether the sandbox is still good."""
        sandbox, host = self._sandbox, self._host
        assert sandbox is not None and host is not None
        running: asyncio.Future[Any]
        if host.inline:
            running = host.call_inline(call.uuid, call.params)
        else:
            (sandbox.input_dir / "params.json").write_bytes(call.params)
            running = asyncio.ensure_future(host.run(call.uuid))
        broke = await self._race(running, timeout)
        status, result, error, healthy, retryable = "DONE", None, None, True, False
        if broke is not None:
            healthy = False
            status, error, logs, retryable = await self._broke(broke, timeout)
        else:
            try:
                if host.inline:
                    payload = host.inline_result(call.uuid, running.result())
                else:  # run() gave it
                    payload = cast("bytes | None", running.result())
            except CallFailed as failure:
                status, error = "ERROR", str(failure)
            else:
                if payload is not None:
                    result = _as_json(payload)
                else:
                    result = _read_result(sandbox.output_dir)
            logs = sandbox.take_output()
        if not host.inline:  # inline, nothing was written there
            clear(sandbox.input_dir)
        sandbox.clear_output()
        outcome = self._outcome(
            call, 0, first, first.started_at, status, result, error, logs, retryable
        )
        return outcome, healthy

    async def _relaunch(self) -> None:
        """Start the run command again after a crash or a timeout; reset if that fails."""
        try:
            await self._launch()
        except (FumError, OSError) as exc:
            log.warning("miniworker.relaunch_failed", error=str(exc))
            await self._reset()
