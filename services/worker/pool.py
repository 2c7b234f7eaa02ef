"""The miniworkers of one node: spawning them, the preload policy, and brokering calls.

A ``Slot`` is one miniworker process as the worker sees it. A slot is spawned either
for the preload policy (generic for a runtime, or set up for a function before any call)
or for one waiting call, which it then runs from a cold start. Idle slots take waiting
calls: one warm for the function first, else a generic one of its runtime (which the
miniworker specialises on that call). Nothing here awaits a sandbox: the pool reacts to
the miniworkers' messages.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import zmq

from services.common.archive import limits_of
from services.common.errors import FumError
from services.common.estimate import expected_wait, moving, worth_starting
from services.common.metrics import register
from services.common.models import Call, Function, Runtime
from services.common.node_protocol import Heartbeat
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
from services.common.proc import die_with_parent, python_module
from services.common.protocol import Message
from services.common.rpc import Channel, bound_endpoint, make_socket
from services.common.settings import settings_env
from services.common.tasks import Background
from services.miniworker.sandbox import tail
from services.miniworker.settings import MiniworkerSettings

from . import metrics
from .packages import PackageCache
from .settings import WorkerSettings

log = structlog.get_logger()

STOP_GRACE = 5.0
# A warm slot of a function whose calls are short takes its calls in batches (one Run,
# one request to the sandbox) of about FUM_BATCH_WORK seconds of work (WorkerSettings),
# and at most MAX_BATCH calls: under load, most of a call's cost is its messages, and a
# batch shares them.
MAX_BATCH = 64


@dataclass(eq=False)
class Job:
    """A call handed to this node, waiting for (or running in) a slot."""

    call: Call
    timeout: float
    function: Function
    package: Path | None  # its files in the node's store; None until its build is ready
    retries: int = 0  # runs left if its sandbox dies under it
    early: bool = False  # dispatched once only: the api may hear the result before the db
    stored: bool = True  # False: the db may not hold the call; the writes carry it
    alone: bool = False  # never in a batch (a retry after its sandbox died)


@dataclass(eq=False)
class Slot:
    mw_id: str
    runtime: Runtime
    function: Function | None = None  # what it is set up (or being set up) for
    state: str = "starting"  # starting -> preparing -> idle <-> busy; stopping
    # the calls it runs (one, or a batch), or the call it was spawned for; by number
    jobs: dict[int, Job] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    last_alive: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    setting_up: bool = False  # its Run begins with a start (specialised or cold)

    def warm_for(self, function: Function) -> bool:
        f = self.function
        return f is not None and f.name == function.name and f.sha256 == function.sha256


def default_pool_bind(node_dir: Path) -> str:
    """A unix socket in the node's folder (cheaper than tcp), where its path fits."""
    path = node_dir.resolve() / "pool.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        return "tcp://127.0.0.1:0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # left by a previous run
    return f"ipc://{path}"


# What a spare slot is for: nothing yet. A spare is a miniworker process started ahead
# (its interpreter and imports are most of a cold start's first half), handed the next
# call that needs a new sandbox.
SPARE = Runtime(name="", image="", run="")


def miniworker_settings(
    s: WorkerSettings, mw_id: str, sandbox_dir: Path, endpoint: str = ""
) -> MiniworkerSettings:
    """What a sandbox of this node is driven by (a miniworker's settings; a build's)."""
    return MiniworkerSettings(
        mw_id=mw_id,
        node_id=s.node_id,
        worker_endpoint=endpoint,
        sandbox_dir=str(sandbox_dir),
        node_dir=s.node_dir,
        driver=s.driver,
        alive_interval=s.heartbeat_interval,
        setup_timeout=s.setup_timeout,
        log_level=s.log_level,
        docker_network=s.docker_network,
        docker_host_ip=s.docker_host_ip,
        docker_registry=s.docker_registry,
        **limits_of(s),
        keeper_hosts=s.keeper_hosts,
    )


class Pool:
    def __init__(
        self,
        settings: WorkerSettings,
        ctx: zmq.Context,
        packages: PackageCache,
        base_env: dict[str, str],
        on_start: Callable[[Job], None],
        on_outcome: Callable[[Job, Outcome], None],
    ) -> None:
        self.settings = settings
        self.packages = packages
        self.runtimes: dict[str, Runtime] = {}
        self.functions: dict[str, Function] = {}
        self._base_env = base_env
        self._on_start = on_start
        self._on_outcome = on_outcome
        self._slots: dict[str, Slot] = {}
        self._queues: dict[str, deque[Job]] = {}  # function -> calls waiting, oldest first
        self._broken: dict[str, str] = {}  # function -> sha whose set-up failed
        self._durations: dict[str, float] = {}  # function -> its calls' mean run, seconds
        # (function, start kind) -> its starts' mean set-up, seconds; ("", kind): any's
        self._starts: dict[tuple[str, str], float] = {}
        self._fetching: set[str] = set()  # artifacts being fetched for waiting calls
        self._ids = itertools.count(1)
        self._background = Background()
        self._closing = False
        sock = make_socket(ctx, zmq.ROUTER)
        sock.bind(settings.pool_bind or default_pool_bind(Path(settings.node_dir)))
        self.endpoint = bound_endpoint(sock)
        self._channel = Channel(sock, self._on_frames, name="pool")
        self._sandboxes = Path(settings.node_dir) / "sandboxes"
        shutil.rmtree(self._sandboxes, ignore_errors=True)  # what a previous run left
        self._sandboxes.mkdir(parents=True)
        register(metrics.PoolCollector(self.states))
        self._handlers = {
            Ready: self._on_ready,
            CallDone: self._on_call_done,
            PrepareFailed: self._on_prepare_failed,
            Alive: self._on_alive,
        }

    # ---- what the worker asks of the pool

    def submit(self, job: Job) -> None:
        if self._closing:
            return
        self._queues.setdefault(job.function.name, deque()).append(job)
        self._schedule(preload=False)

    def sync(self, runtimes: list[Runtime], functions: list[Function]) -> None:
        """Replace the catalogue (after registering with the api)."""
        self.runtimes = {r.name: r for r in runtimes}
        self.functions = {f.name: f for f in functions}
        self._retire_stale()
        self._collect()
        self._schedule()

    def put_runtime(self, runtime: Runtime) -> None:
        self.runtimes[runtime.name] = runtime
        self._retire_stale()
        self._schedule()

    def put_function(self, function: Function) -> None:
        """Take a function registered (or changed): work for it alone, however many
        functions the node knows (a catalogue of thousands is registered one by one)."""
        before = self.functions.get(function.name)
        self.functions[function.name] = function
        self._broken.pop(function.name, None)
        for job in self._queues.get(function.name, ()):
            if job.function.sha256 == function.sha256:  # its build may be ready now
                job.function = function
        self._retire_stale()
        self.packages.named(function.stored_files())
        if before is not None and before.stored_files() - function.stored_files():
            self._collect()
        self._schedule(preload=False)
        self._preload((function,))

    def remove_runtime(self, name: str) -> None:
        self.runtimes.pop(name, None)
        self._retire_stale()

    def remove_function(self, name: str) -> None:
        self.functions.pop(name, None)
        self._retire_stale()
        self._collect()

    def _collect(self) -> None:
        """Remove the packages and store entries of this node that no function needs any
        more: neither one of the catalogue nor one a call here waits for or runs with."""
        functions = [*self.functions.values()]
        functions += [job.function for queue in self._queues.values() for job in queue]
        for slot in self._slots.values():
            functions += [job.function for job in slot.jobs.values()]
            if slot.function is not None and slot.state != "stopping":
                functions.append(slot.function)
        self.packages.keep_only(set().union(*(f.stored_files() for f in functions)))

    def running(self) -> list[int]:
        """Calls this node holds: waiting here or running in a slot."""
        held = [job.call.call_num for q in self._queues.values() for job in q]
        held += [num for s in self._slots.values() for num in s.jobs]
        return held

    def states(self) -> tuple[dict[str, int], int]:
        """Sandboxes by state, and calls waiting (for metrics)."""
        states: dict[str, int] = {}
        for slot in self._slots.values():
            states[slot.state] = states.get(slot.state, 0) + 1
        return states, sum(len(q) for q in self._queues.values())

    def has_idle(self, function: str) -> bool:
        """Whether a sandbox set up for ``function`` is idle (``load``'s ``idle``)."""
        return any(
            slot.state == "idle" and slot.function is not None and slot.function.name == function
            for slot in self._slots.values()
        )

    def load(self) -> Heartbeat:
        """What the node's heartbeat says: busy slots, waiting calls, idle sandboxes."""
        busy = sum(1 for s in self._slots.values() if s.state == "busy")
        queued = sum(len(q) for q in self._queues.values())
        # handed to a slot and not begun: a cold start's call, the rest of a batch
        queued += sum(len(s.jobs) - (s.state == "busy") for s in self._slots.values() if s.jobs)
        idle: dict[str, int] = {}
        generic: dict[str, int] = {}
        sandboxes: dict[str, int] = {}
        for slot in self._slots.values():
            if slot.state != "stopping" and slot.function is not None:
                sandboxes[slot.function.name] = sandboxes.get(slot.function.name, 0) + 1
            if slot.state != "idle":
                continue
            if slot.function is not None:
                idle[slot.function.name] = idle.get(slot.function.name, 0) + 1
            else:
                generic[slot.runtime.name] = generic.get(slot.runtime.name, 0) + 1
        return Heartbeat(
            node_id=self.settings.node_id,
            capacity=self.settings.capacity,
            busy=busy,
            queued=queued,
            idle=idle,
            generic=generic,
            sandboxes=sandboxes,
            durations=dict(self._durations),
            starts=self._start_costs(sandboxes),
        )

    # ---- the loop

    async def serve(self) -> None:
        """Declare silent miniworkers dead (their messages come by callback)."""
        await self._watchdog()

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        identity, payload = frames
        slot = self._slots.get(identity.decode())
        if slot is None:
            return  # a miniworker already declared dead
        try:
            message = POOL_PROTOCOL.decode(payload)
        except FumError as exc:
            log.error("pool.bad_message", mw=slot.mw_id, error=str(exc))
            return
        slot.last_alive = time.monotonic()
        handler = self._handlers.get(type(message))
        if handler is None:
            log.error("pool.unexpected", mw=slot.mw_id, msg_type=message.msg_type)
            return
        handler(slot, message)  # type: ignore[operator]

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            self.evict_idle()
            if self._queues:  # a call running long enough may make a start worth it now
                self._schedule(preload=False)
            deadline = time.monotonic() - self.settings.miniworker_timeout
            for slot in list(self._slots.values()):
                if (
                    slot.proc is not None
                    and slot.last_alive < deadline
                    and slot.proc.returncode is None
                ):
                    log.warning("pool.miniworker_silent", mw=slot.mw_id)
                    slot.proc.kill()

    async def close(self) -> None:
        """Stop every miniworker: Stop first, then kill what is left after a grace period."""
        self._closing = True
        for slot in self._slots.values():
            slot.state = "stopping"
            if slot.proc is not None and slot.proc.returncode is None:
                self._send(slot, Stop())
        procs = [s.proc for s in self._slots.values() if s.proc is not None]
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=STOP_GRACE)
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        await self._background.close()
        self._channel.close()

    # ---- miniworker messages

    def _send(self, slot: Slot, message: Message) -> None:
        def failed(exc: zmq.ZMQError) -> None:  # not connected (yet, or any more)
            log.warning("pool.send_failed", mw=slot.mw_id, error=str(exc))

        try:
            self._channel.send([slot.mw_id.encode(), POOL_PROTOCOL.encode(message)])
        except zmq.ZMQError as exc:
            failed(exc)

    def _on_alive(self, slot: Slot, message: Alive) -> None:
        pass  # last_alive is stamped for every message

    def _on_ready(self, slot: Slot, message: Ready, settled: bool = False) -> None:
        """A miniworker is ready for work; ``settled``: a warm one back from a call, the
        sandboxes on the node the same as before it."""
        if slot.state == "stopping":
            return
        if slot.state == "starting":
            if slot.jobs:  # spawned for this call: a cold start
                self._run(slot, list(slot.jobs.values()))
            elif slot.runtime is SPARE:
                slot.state = "spare"
                self._schedule()
            else:
                self._background.spawn(self._prepare(slot))
            return
        if slot.state == "preparing":
            self._replenish(slot)
        slot.state = "idle"
        slot.last_used = time.monotonic()
        if message.function is None:
            slot.function = None
        if self._stale(slot):
            self._stop(slot)
            self._collect()  # what it was set up from may be needed no more
            settled = False
        self._schedule(preload=not settled)

    async def _prepare(self, slot: Slot) -> None:
        slot.state = "preparing"
        package = None
        if slot.function is not None:
            archive = slot.function.setup_archive()
            try:
                if archive is None:
                    raise FumError(f"function {slot.function.name!r} has no build ready")
                package = str(await self.packages.get(archive))
            except FumError as exc:
                self._on_prepare_failed(slot, PrepareFailed(error=str(exc)))
                return
        self._send(slot, Prepare(runtime=slot.runtime, function=slot.function, package=package))

    def _on_prepare_failed(self, slot: Slot, message: PrepareFailed) -> None:
        log.warning("pool.prepare_failed", mw=slot.mw_id, error=message.error)
        function = slot.function
        self._stop(slot)
        if function is not None:
            # Do not start it again until the function changes; fail who waits for it.
            self._broken[function.name] = function.sha256
            for job in self._queues.pop(function.name, deque()):
                self._fail(job, f"set-up failed: {message.error}")

    def _replenish(self, slot: Slot) -> None:
        """A sandbox was set up for its function: it took a spare link farm, if there was
        one (docker driver); another is made."""
        if slot.function is not None and (archive := slot.function.setup_archive()):
            self.packages.replenish(archive)

    def _on_call_done(self, slot: Slot, message: CallDone) -> None:
        if slot.setting_up:
            self._replenish(slot)
        finished: list[tuple[Job, Outcome]] = []
        for outcome in message.outcomes:
            job = slot.jobs.pop(outcome.call_num, None)
            if job is None:
                log.error("pool.unexpected_outcome", mw=slot.mw_id, call=outcome.call_num)
                continue
            finished.append((job, outcome))
            self._timed(job.function.name, outcome)
        unrun = [job for num in message.unrun if (job := slot.jobs.pop(num, None))]
        self._requeue(unrun)
        if unrun and not message.ready:  # another idle sandbox may take them meanwhile
            self._schedule(preload=False)
        if message.ready and slot.function is not None:
            # idle before the results are reported: the next call finds it warm
            function = slot.function
            ready = Ready(runtime=slot.runtime.name, function=function.name, sha256=function.sha256)
            self._on_ready(slot, ready, settled=not unrun and not slot.setting_up)
        for job, outcome in finished:
            self._on_outcome(job, outcome)

    # ---- placing calls

    def _run(self, slot: Slot, jobs: list[Job]) -> None:
        """Hand calls of one function (one, or a batch) to a slot."""
        job = jobs[0]
        assert job.package is not None  # _schedule saw to it
        slot.setting_up = slot.state != "idle" or not slot.warm_for(job.function)
        slot.state, slot.function = "busy", job.function
        slot.jobs = {j.call.call_num: j for j in jobs}
        slot.last_used = time.monotonic()
        runtime = self.runtimes.get(job.function.runtime, slot.runtime)
        self._send(
            slot,
            Run(
                calls=[j.call for j in jobs],
                timeout=job.timeout,
                runtime=runtime,
                function=job.function,
                package=str(job.package),
            ),
        )
        for j in jobs:
            self._on_start(j)

    def _requeue(self, jobs: list[Job]) -> None:
        """Calls of a batch that never began: back to the head of their queue, in order, as
        they were (no attempt counted)."""
        if jobs:
            self._queues.setdefault(jobs[0].function.name, deque()).extendleft(reversed(jobs))

    def _timed(self, function: str, outcome: Outcome) -> None:
        """Keep moving averages of how long the function's calls take (their run, not the
        set-up the first call of a sandbox waited for) and its sandboxes' starts."""
        setup = outcome.init_ms / 1000
        if outcome.start in ("cold", "specialized") and setup > 0:
            for key in ((function, outcome.start), ("", outcome.start)):
                self._starts[key] = moving(self._starts.get(key), setup)
        if outcome.status == "DONE":
            seconds = outcome.finished_at - outcome.started_at - setup
            self._durations[function] = moving(self._durations.get(function), seconds)

    def _worth_starting(self, function: Function, queued: int) -> bool:
        """Whether another sandbox should start for the function's ``queued`` calls: the
        expected wait on the sandboxes it has (warm or starting) is longer than a start
        (services/common/estimate.py)."""
        serving = [
            s for s in self._slots.values() if s.state != "stopping" and s.warm_for(function)
        ]
        wait = expected_wait(queued, len(serving), self._duration(function, serving))
        return worth_starting(wait, self._start_cost(function))

    def _duration(self, function: Function, serving: list[Slot]) -> float | None:
        """How long a call of the function is expected to take: its mean, or, longer, what
        its running calls have taken so far (a lower bound, and all there is at first; a
        sandbox still starting for its call tells nothing of the call)."""
        now = time.monotonic()
        elapsed = [now - s.last_used for s in serving if s.state == "busy" and not s.setting_up]
        mean = self._durations.get(function.name)
        if not elapsed:
            return mean
        return max(mean or 0.0, *elapsed)

    def _start_costs(self, sandboxes: dict[str, int]) -> dict[str, float]:
        """What the heartbeat says of starts: for the functions that ran or run here, and
        under "" a cold start of any (a node of thousands of functions sends few)."""
        costs = {"": cold} if (cold := self._starts.get(("", "cold"))) is not None else {}
        for name in {*sandboxes, *self._durations}:
            function = self.functions.get(name)
            if function is not None and (cost := self._start_cost(function)) is not None:
                costs[name] = cost
        return costs

    def _start_cost(self, function: Function) -> float | None:
        """Seconds the next sandbox of the function is expected to take to start: from a
        generic one (specialised) when one is idle, else from nothing (cold); observed for
        this function, else for any on this node, else None."""
        generic = any(
            s.state == "idle" and s.function is None and s.runtime.name == function.runtime
            for s in self._slots.values()
        )
        kind = "specialized" if generic else "cold"
        return self._starts.get((function.name, kind), self._starts.get(("", kind)))

    def _batch(self, slot: Slot, queue: deque[Job]) -> list[Job]:
        """The calls a warm slot takes from the head of its function's queue: one, or, for
        a function whose calls are short, a batch holding about ``batch_work`` of them and no
        more than the slot's share of the queue (the other idle warm slots take theirs)."""
        job = queue.popleft()
        mean = self._durations.get(job.function.name)
        if not queue or mean is None or job.alone or not slot.warm_for(job.function):
            return [job]
        function = job.function
        idle = sum(1 for s in self._slots.values() if s.state == "idle" and s.warm_for(function))
        share = -(-(len(queue) + 1) // idle)  # this slot is one of them
        size = min(MAX_BATCH, share, int(self.settings.batch_work / max(mean, 1e-6)))
        batch = [job]
        while queue and len(batch) < size and queue[0].timeout == job.timeout:
            if queue[0].alone:
                break
            batch.append(queue.popleft())
        return batch

    def _idle_slot_for(self, function: Function) -> Slot | None:
        generic = None
        for slot in self._slots.values():
            if slot.state != "idle":
                continue
            if slot.warm_for(function):
                return slot
            if generic is None and slot.function is None and slot.runtime.name == function.runtime:
                generic = slot
        if generic is not None and self._at_most(function):
            return None  # specialising one more would pass the function's max_containers
        return generic

    def _of(self, function: Function) -> int:
        """Sandboxes of the function on this node: set up, being set up, or spawned for it."""
        return sum(
            1
            for s in self._slots.values()
            if s.state != "stopping" and s.function is not None and s.function.name == function.name
        )

    def _at_most(self, function: Function) -> bool:
        limit = function.limits.max_containers
        return limit is not None and self._of(function) >= limit

    def _active(self) -> int:
        """Sandboxes on the node, and miniworkers about to have one (spares do not count)."""
        return sum(
            1 for s in self._slots.values() if s.state != "stopping" and s.runtime is not SPARE
        )

    def _buildable(self, name: str, queue: deque[Job]) -> bool:
        """Whether the calls waiting for a function may start: its build is ready (and its
        artifact on this node). While the build runs they wait; when it failed they fail."""
        job = queue[0]
        if job.package is not None:
            return True
        build = job.function.build
        if build is not None and build.status == "failed":
            failed = list(queue)
            queue.clear()
            for each in failed:
                self._fail(each, f"the build of function {name!r} failed:\n{tail(build.log)}")
            return False
        archive = job.function.setup_archive()
        if archive is None:
            return False  # put_function brings the build's end
        package = self.packages.cached(archive)
        if package is None:
            if archive not in self._fetching:
                self._fetching.add(archive)
                self._background.spawn(self._fetch(archive))
            return False
        for waiting in queue:
            if waiting.package is None and waiting.function.setup_archive() == archive:
                waiting.package = package
        return True

    async def _fetch(self, archive: str) -> None:
        """Fetch an artifact that calls wait for, then start them (or fail them)."""
        try:
            await self.packages.get(archive)
        except FumError as exc:
            self._fetching.discard(archive)
            for queue in list(self._queues.values()):
                if queue and queue[0].function.setup_archive() == archive:
                    failed = list(queue)
                    queue.clear()
                    for job in failed:
                        self._fail(job, str(exc))
            return
        self._fetching.discard(archive)
        self._schedule(preload=False)

    def _schedule(self, preload: bool = True) -> None:
        """Start the waiting calls that can start; then, if the node's sandboxes changed
        (or ``preload``), keep what the preload policy asks for. A call that only takes a
        warm idle sandbox changes nothing there: the common case skips the preload pass."""
        self._take_back()
        changed = False
        for name in list(self._queues):
            queue = self._queues[name]
            while queue:
                job = queue[0]
                if job.package is None and not self._buildable(name, queue):
                    break
                slot = self._idle_slot_for(job.function)
                if slot is not None and slot.warm_for(job.function):
                    self._run(slot, self._batch(slot, queue))
                    continue
                if not self._worth_starting(job.function, len(queue)):
                    break  # sooner served by one of its sandboxes than by a new one
                if slot is not None:  # a generic one, specialised for the call
                    # Its replacement (the preload policy's) starts once the call is
                    # over: starting a container now would compete with its set-up.
                    self._run(slot, self._batch(slot, queue))
                    continue
                if not self._make_room(job.function):
                    break
                queue.popleft()
                changed = True
                runtime = self.runtimes.get(job.function.runtime)
                if runtime is None:
                    self._fail(job, f"runtime {job.function.runtime!r} is not on this node")
                    continue
                spare = next((s for s in self._slots.values() if s.state == "spare"), None)
                if spare is not None:  # a cold start without the process start
                    spare.runtime = runtime
                    self._run(spare, [job])
                else:
                    self._spawn(runtime, job.function, job)
            if not queue:
                del self._queues[name]
        if preload or changed:
            self._preload()

    def _take_back(self) -> None:
        """A call waiting for the sandbox started for it goes to a warm sandbox of its
        function that became idle first: a start can take seconds on a busy host, a warm
        call milliseconds. The started one goes on starting, and is set up for the
        function when it is up (one more warm sandbox, as the estimate wanted)."""
        for slot in list(self._slots.values()):
            if slot.state != "starting" or not slot.jobs:
                continue
            (job,) = slot.jobs.values()  # spawned for one call
            idle = self._idle_slot_for(job.function)
            if idle is not None and idle.warm_for(job.function):
                slot.jobs = {}
                self._run(idle, [job])

    def _make_room(self, function: Function) -> bool:
        """Whether a slot may be spawned now, evicting the LRU idle slot of another if full."""
        if self._at_most(function):
            return False  # the call waits for one of the function's sandboxes
        if self._active() < self.settings.capacity:
            return True
        idle = [s for s in self._slots.values() if s.state == "idle" and not s.warm_for(function)]
        if not idle:
            return False
        self._stop(min(idle, key=lambda s: s.last_used))
        return True

    def _preload(self, functions: Iterable[Function] | None = None) -> None:
        """Keep the sandboxes the preload policy and the functions' min_warm ask for (of
        ``functions`` alone, if given: the others have not changed)."""
        spares = sum(
            1 for s in self._slots.values() if s.runtime is SPARE and s.state != "stopping"
        )
        for _ in range(self.settings.spare - spares):
            self._spawn(SPARE, None, None)
        for runtime in self.runtimes.values():
            for _ in range(self._floor(runtime, None) - self._generic(runtime)):
                if self._active() >= self.settings.capacity:
                    return
                self._spawn(runtime, None, None)
        for function in self.functions.values() if functions is None else functions:
            of_function = self.runtimes.get(function.runtime)
            if of_function is None or self._broken.get(function.name) == function.sha256:
                continue
            if function.setup_archive() is None:
                continue  # its build is not ready
            floor = self._floor(of_function, function)
            if floor == 0:
                continue  # most functions: nothing kept warm before a call
            for _ in range(floor - self._warm(function)):
                if self._active() >= self.settings.capacity or self._at_most(function):
                    break
                self._spawn(of_function, function, None)

    def _floor(self, runtime: Runtime, function: Function | None) -> int:
        """How many sandboxes of this kind the node keeps, used or not."""
        policy, want = self.settings.preload, self.settings.prewarm
        if function is None:
            return want if policy == "runtime" else 0
        return max(function.limits.min_warm, want if policy == "function" else 0)

    def _warm(self, function: Function) -> int:
        return sum(
            1 for s in self._slots.values() if s.state != "stopping" and s.warm_for(function)
        )

    def _generic(self, runtime: Runtime) -> int:
        return sum(
            1
            for s in self._slots.values()
            if s.state != "stopping"
            and s.function is None
            and not s.jobs
            and s.runtime.name == runtime.name
        )

    def evict_idle(self) -> None:
        """Stop the sandboxes idle longer than keep_warm, down to what preload keeps."""
        cutoff = time.monotonic() - self.settings.keep_warm
        stale = sorted(
            (s for s in self._slots.values() if s.state == "idle" and s.last_used < cutoff),
            key=lambda s: s.last_used,
        )
        for slot in stale:
            function = slot.function
            runtime = self.runtimes.get(slot.runtime.name, slot.runtime)
            if function is None:
                kept = self._generic(runtime)
            else:
                kept = sum(
                    1
                    for s in self._slots.values()
                    if s.state != "stopping" and s.warm_for(function)
                )
            if kept > self._floor(runtime, function):
                log.info("pool.evicted", mw=slot.mw_id, function=function and function.name)
                self._stop(slot)

    def _fail(self, job: Job, error: str, retryable: bool = False) -> None:
        now = time.time()
        self._on_outcome(
            job,
            Outcome(
                call_num=job.call.call_num,
                status="ERROR",
                error=error,
                start="cold",
                started_at=now,
                finished_at=now,
                retryable=retryable,
            ),
        )

    # ---- slot lifecycle

    def _stale(self, slot: Slot) -> bool:
        runtime = self.runtimes.get(slot.runtime.name)
        if runtime is None or runtime.spec() != slot.runtime.spec():
            return True
        if slot.function is None:
            return False
        current = self.functions.get(slot.function.name)
        return (
            current is None
            or current.sha256 != slot.function.sha256
            or current.setup_archive() != slot.function.setup_archive()
        )

    def _retire_stale(self) -> None:
        for slot in list(self._slots.values()):
            waiting = slot.state in ("idle", "starting", "preparing") and not slot.jobs
            waiting = waiting and slot.runtime is not SPARE
            if waiting and self._stale(slot):
                self._stop(slot)

    def _stop(self, slot: Slot) -> None:
        if slot.state == "stopping":
            return
        slot.state = "stopping"
        if slot.proc is not None:
            self._send(slot, Stop())
            self._background.spawn(self._reap(slot))

    async def _reap(self, slot: Slot) -> None:
        assert slot.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(slot.proc.wait()), STOP_GRACE)
        except TimeoutError:
            slot.proc.kill()

    def _spawn(self, runtime: Runtime, function: Function | None, job: Job | None) -> Slot:
        mw_id = f"{self.settings.node_id}-{next(self._ids)}"
        slot = Slot(mw_id=mw_id, runtime=runtime, function=function)
        if job is not None:
            slot.jobs[job.call.call_num] = job
        metrics.SPAWNED.labels(
            "cold" if job is not None else "warm" if function is not None else "generic"
        ).inc()
        self._slots[mw_id] = slot
        self._background.spawn(self._run_slot(slot))
        return slot

    async def _run_slot(self, slot: Slot) -> None:
        """Start the miniworker process, and clean up after it when it exits."""
        sandbox_dir = self._sandboxes / slot.mw_id
        settings = miniworker_settings(self.settings, slot.mw_id, sandbox_dir, self.endpoint)
        env = {**self._base_env, **settings_env(settings)}
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                *python_module("services.miniworker"),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            slot.last_alive = time.monotonic()
            code = await slot.proc.wait()
        finally:
            self._slots.pop(slot.mw_id, None)
        jobs, slot.jobs = list(slot.jobs.values()), {}
        if self._closing:
            return  # its calls stay unfinished in the db; the api dispatches them again
        if slot.state != "stopping":
            log.warning("pool.miniworker_died", mw=slot.mw_id, code=code)
        if jobs:
            # the first was running (or being set up for); the rest of a batch never began
            error = f"the miniworker running the call died (exit status {code})"
            self._fail(jobs[0], error, retryable=True)
            self._requeue(jobs[1:])
        self._schedule()
