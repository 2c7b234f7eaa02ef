"""The api's side of the node channel: live workers, placing calls, and their results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog
import zmq

from services.common.curve import ClusterKeys
from services.common.errors import FumError, Unavailable, UnknownNode
from services.common.metrics import register
from services.common.models import Call, Function, Limits, Runtime
from services.common.node_protocol import (
    NODE_PROTOCOL,
    BuildFinished,
    BuildRequested,
    CallFinished,
    CatalogSynced,
    Dispatch,
    Heartbeat,
    HeartbeatAck,
    HoldCalls,
    PlaceCalls,
    Register,
    Registered,
    SessionEnded,
)
from services.common.protocol import Message, Protocol
from services.common.rpc import EVENT, Channel, bound_endpoint, make_socket

from . import metrics
from .admission import Admission
from .policies import POLICIES, Node
from .settings import ApiSettings

log = structlog.get_logger()

RECENT = 10_000  # finished calls the api remembers


@dataclass(eq=False)
class Placed:
    """A call handed to a worker (or waiting for one) and not finished yet."""

    call: Call
    timeout: float
    node_id: int | None = None
    claim_by: float | None = None  # found RUNNING at start: its worker has until then to say so
    again: bool = False  # dispatched more than once (or found unfinished at start)
    stored: bool = True  # False: a blocking call the db may not hold yet (Dispatch.stored)


class Dispatcher:
    def __init__(
        self,
        settings: ApiSettings,
        ctx: zmq.Context,
        keys: ClusterKeys,
        catalogue: Callable[[], tuple[list[Runtime], list[Function]]],
        function: Callable[[str], Function | None],
    ) -> None:
        self.settings = settings
        self.nodes: dict[int, Node] = {}
        self._catalogue = catalogue
        self._function = function
        self.admission: Admission[Placed] = Admission(
            settings.max_pending,
            settings.queue_limit,
            lambda name: f.limits if (f := function(name)) is not None else Limits(),
        )
        self._policy = POLICIES[settings.invocation_policy]()
        self._placed: dict[int, Placed] = {}
        self._backlog: deque[Placed] = deque()  # no live worker to take them yet
        self._waiters: dict[int, list[asyncio.Future[Call]]] = {}
        self._session_waiters: dict[str, list[asyncio.Future[str]]] = {}
        # builds asked of a node (None: none is live yet) and not finished, by key
        self._builds: dict[str, tuple[BuildRequested, int | None]] = {}
        self.on_build_finished: Callable[[int, BuildFinished], None] = lambda node, m: None
        # Calls finished lately, as their worker reported them: a worker may report before
        # the db has the result, and a client that was answered must then find it here.
        self.recent: OrderedDict[int, Call] = OrderedDict()
        self._ctx, self._keys = ctx, keys
        self.metrics = register(
            metrics.NodesCollector(lambda: list(self.nodes.values()), lambda: len(self._placed))
        )
        self._channel: Channel | None = None  # open(): once the catalogue is loaded
        self.endpoint = ""
        self._handlers: dict[type[Message], Callable[[bytes, Message], Message | None]] = {
            Register: self._on_register,  # type: ignore[dict-item]
            Heartbeat: self._on_heartbeat,  # type: ignore[dict-item]
            CallFinished: self._on_call_finished,  # type: ignore[dict-item]
            PlaceCalls: self._on_place_calls,  # type: ignore[dict-item]
            HoldCalls: self._on_hold_calls,  # type: ignore[dict-item]
            SessionEnded: self._on_session_ended,  # type: ignore[dict-item]
            BuildFinished: self._on_build_finished,  # type: ignore[dict-item]
        }

    def open(self) -> None:
        """Bind the node channel. Called once the catalogue is loaded and the unfinished
        calls are recovered: a worker that registers is sent the whole catalogue, so it
        must not be able to register before the api has one (a restart would leave it
        with none)."""
        sock = self._keys.server(make_socket(self._ctx, zmq.ROUTER))
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes its id back
        sock.bind(self.settings.node_bind)
        self.endpoint = bound_endpoint(sock)
        self._channel = Channel(sock, self._on_frames, name="nodes")

    # ---- calls

    def reserve(self, function: str, count: int = 1) -> None:
        """Room for new calls of ``function`` (before they are stored), or ``Overloaded``."""
        self.admission.reserve(function, count)

    def release(self, function: str, count: int = 1) -> None:
        self.admission.release(function, count)

    def dispatch(
        self,
        call: Call,
        timeout: float,
        reserved: bool = True,
        again: bool = False,
        stored: bool = True,
    ) -> None:
        """Hand a call to a worker, now or when its turn comes. ``stored``: the db holds
        the call; if not, the worker's writes create it."""
        call = msgspec.structs.replace(call, attempts=call.attempts + 1)
        placed = Placed(call, timeout, again=again, stored=stored)
        self._placed[call.call_num] = placed
        if self.admission.admit(call.func_name, placed, reserved):
            self._place(placed)

    def recover(self, pending: list[Call], running: list[Call], timeouts: dict[str, float]) -> None:
        """Calls the db holds unfinished when the api starts: PENDING ones are dispatched
        again; RUNNING ones are left to their worker if it says it holds them on
        registering, and dispatched again if no worker does within the heartbeat timeout.
        """
        for call in pending:
            timeout = timeouts.get(call.func_name, self.settings.default_timeout)
            self.dispatch(call, timeout, reserved=False, again=True)
        claim_by = time.monotonic() + self.settings.heartbeat_timeout
        for call in running:
            timeout = timeouts.get(call.func_name, self.settings.default_timeout)
            placed = Placed(call, timeout, claim_by=claim_by, again=True)
            self._placed[call.call_num] = placed
            self.admission.admit(call.func_name, placed, reserved=False)
        log.info("dispatch.recovered", pending=len(pending), running=len(running))

    def place_stored(self, calls: list[Call], timeouts: Callable[[str], float]) -> int:
        """Place calls the db holds PENDING that were made elsewhere (by a worker's db
        request, or found by the sweep): those the api does not hold or has not just seen
        finish; how many it placed. Dispatched as calls that may run twice (``again``):
        their worker writes the db before it tells the api, and the db keeps one result."""
        placed = 0
        for call in calls:
            num = call.call_num
            if call.status != "PENDING" or num in self._placed or num in self.recent:
                continue
            self.dispatch(call, timeouts(call.func_name), reserved=False, again=True)
            placed += 1
        return placed

    def place_stored_calls(self, calls: list[Call]) -> None:
        """``place_stored`` with each function's timeout (the db's ``placed`` calls)."""
        self.place_stored(calls, self.timeout_of)

    def limits_changed(self, function: str) -> None:
        """A function's concurrency may have grown: start the calls that may run now."""
        for placed in self.admission.runnable(function):
            self._place(placed)

    def _place(self, placed: Placed) -> None:
        nodes = list(self.nodes.values())
        if not nodes:
            placed.node_id = None
            self._backlog.append(placed)
            return
        name = placed.call.func_name
        node = self._policy.choose(nodes, name)
        node.take_warm(name)
        placed.node_id = node.node_id
        node.add_call(placed.call.call_num, name)
        dispatch = Dispatch(
            call=placed.call, timeout=placed.timeout, early=not placed.again, stored=placed.stored
        )
        self._send(node, dispatch)

    # ---- builds

    def request_build(self, message: BuildRequested) -> None:
        """Ask the least loaded live node to run a build (the first to register, if none
        is live); a node lost meanwhile hands it to another."""
        nodes = list(self.nodes.values())
        node = min(nodes, key=lambda n: (n.load(), n.node_id)) if nodes else None
        self._builds[message.key] = (message, node.node_id if node else None)
        if node is not None:
            self._send(node, message)

    def _on_build_finished(self, identity: bytes, message: BuildFinished) -> None:
        node = next((n for n in self.nodes.values() if n.identity == identity), None)
        if node is None:
            raise UnknownNode("only a registered node may report a build")
        asked = self._builds.pop(message.key, None)
        if asked is None:
            return None  # reported twice (asked again after a node seemed lost)
        self.on_build_finished(node.node_id, message)
        return None

    def _hand_builds(self, lost: int | None) -> None:
        """Ask again for the builds of node ``lost`` (None: those waiting for a node)."""
        for message, node_id in list(self._builds.values()):
            if node_id == lost:
                self.request_build(message)

    def wait(self, call_num: int) -> asyncio.Future[Call]:
        """A future for the call's final state (register it before dispatching)."""
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_num, []).append(future)
        return future

    def forget(self, call_num: int, future: asyncio.Future[Call]) -> None:
        waiters = self._waiters.get(call_num)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[call_num]

    def wait_session(self, session: str) -> asyncio.Future[str]:
        """A future for the status a workflow session ends with, as a worker tells it."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._session_waiters.setdefault(session, []).append(future)
        return future

    def forget_session(self, session: str, future: asyncio.Future[str]) -> None:
        waiters = self._session_waiters.get(session)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._session_waiters[session]

    def broadcast(self, message: Message) -> None:
        for node in list(self.nodes.values()):
            self._send(node, message)

    def _send(self, node: Node, message: Message) -> None:
        def failed(exc: zmq.ZMQError) -> None:  # EHOSTUNREACH: the worker is gone
            log.warning("dispatch.send_failed", node=node.node_id, error=str(exc))
            self._declare_dead(node)

        assert self._channel is not None, "no node is registered before open()"
        self._channel.send_event([node.identity, EVENT], NODE_PROTOCOL.encode(message), failed)

    # ---- the node channel

    async def serve(self) -> None:
        """Declare dead the workers whose heartbeats stopped (messages come by callback)."""
        await self._reap()

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 3:
            return
        identity, request_id, *payloads = frames  # events may come several to a message
        for payload in payloads:
            try:
                message = NODE_PROTOCOL.decode(payload)
                handler = self._handlers.get(type(message))
                if handler is None:
                    raise FumError(f"node: {message.msg_type} is not for the api")
                reply = handler(identity, message)
            except FumError as exc:
                reply = Protocol.error(exc)
            if reply is not None and request_id != EVENT and self._channel is not None:
                with contextlib.suppress(zmq.ZMQError):  # the worker left meanwhile
                    self._channel.send([identity, request_id, NODE_PROTOCOL.encode(reply)])

    def _on_register(self, identity: bytes, message: Register) -> Registered:
        old = self.nodes.get(message.node_id)
        node = Node(
            node_id=message.node_id,
            identity=identity,
            capacity=message.capacity,
            preload=message.preload,
            driver=message.driver,
            last_seen=time.monotonic(),
        )
        self.nodes[node.node_id] = node
        held = set(message.running)
        lost = []
        for placed in self._placed.values():
            if placed.call.call_num in held:
                placed.node_id, placed.claim_by = node.node_id, None
                node.add_call(placed.call.call_num, placed.call.func_name)
            elif old is not None and placed.node_id == node.node_id:
                lost.append(placed)  # the worker restarted without them
        log.info(
            "dispatch.node_registered",
            node=node.node_id,
            capacity=node.capacity,
            preload=node.preload,
            lost=len(lost),
        )
        runtimes, functions = self._catalogue()
        self._send(node, CatalogSynced(runtimes=runtimes, functions=functions))
        reply = Registered(heartbeat_interval=self.settings.heartbeat_interval)
        # The reply goes out before these calls are dispatched, so the node knows them.
        asyncio.get_running_loop().call_soon(self._redispatch, lost)
        asyncio.get_running_loop().call_soon(self._drain_backlog)
        # a restarted node forgot its builds; a node that was waited for takes the rest
        asyncio.get_running_loop().call_soon(self._hand_builds, node.node_id)
        asyncio.get_running_loop().call_soon(self._hand_builds, None)
        return reply

    def _on_heartbeat(self, identity: bytes, message: Heartbeat) -> HeartbeatAck:
        node = self.nodes.get(message.node_id)
        if node is None or node.identity != identity:
            raise UnknownNode(f"node {message.node_id} is not registered")
        node.last_seen, node.heard_at = time.monotonic(), time.time()
        self.metrics.heard(node.node_id)
        node.capacity, node.busy, node.queued = message.capacity, message.busy, message.queued
        node.idle, node.generic = dict(message.idle), message.generic
        node.sandboxes, node.durations = message.sandboxes, message.durations
        node.starts = message.starts
        return HeartbeatAck()

    def _on_place_calls(self, identity: bytes, message: PlaceCalls) -> None:
        if not any(node.identity == identity for node in self.nodes.values()):
            raise UnknownNode("only a registered node may hand calls to place")
        placed = self.place_stored(message.calls, self.timeout_of)
        log.debug("dispatch.placed_stored", calls=len(message.calls), placed=placed)

    def _on_hold_calls(self, identity: bytes, message: HoldCalls) -> None:
        """A worker runs these calls itself: they are placed on it (as calls that may
        run twice, like those of ``PlaceCalls``), unless the api placed them already."""
        node = next((n for n in self.nodes.values() if n.identity == identity), None)
        if node is None:
            raise UnknownNode("only a registered node may hold calls")
        for call in message.calls:
            num = call.call_num
            if call.status != "PENDING" or num in self._placed or num in self.recent:
                continue
            held = msgspec.structs.replace(call, attempts=call.attempts + 1)
            placed = Placed(held, self.timeout_of(call.func_name), node.node_id, again=True)
            self._placed[num] = placed
            node.calls.add(num)
            self.admission.admit(call.func_name, placed, reserved=False)

    def _on_session_ended(self, identity: bytes, message: SessionEnded) -> None:
        if not any(node.identity == identity for node in self.nodes.values()):
            raise UnknownNode("only a registered node may say a session ended")
        for future in self._session_waiters.pop(message.session, []):
            if not future.done():
                future.set_result(message.status)

    def timeout_of(self, function: str) -> float:
        """The call timeout of a function (the default for one no longer known)."""
        known = self._function(function)
        return known.limits.timeout if known is not None else self.settings.default_timeout

    def _on_call_finished(self, identity: bytes, message: CallFinished) -> None:
        call = message.call
        placed = self._placed.get(call.call_num)
        if placed is not None:
            node = self.nodes.get(placed.node_id) if placed.node_id is not None else None
            if node is not None and node.identity != identity:
                # a run the api gave up on (its node was declared dead) finished after all:
                # the node that holds the call now reports what the db kept
                return None
            del self._placed[call.call_num]
            if node is not None:
                node.drop_call(call.call_num, call.func_name)
                node.give_warm(call.func_name)  # its sandbox is idle again
            following = self.admission.finished(placed.call.func_name)
            if following is not None:
                self._place(following)
        if call.call_num not in self.recent:  # a call dispatched twice may end twice
            metrics.call_ended(call)
        self.recent[call.call_num] = call
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        for future in self._waiters.pop(call.call_num, []):
            if not future.done():
                future.set_result(call)
        return None

    # ---- failures

    async def _reap(self) -> None:
        """Declare dead the workers whose heartbeats stopped."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval / 2)
            now = time.monotonic()
            deadline = now - self.settings.heartbeat_timeout
            for node in list(self.nodes.values()):
                if node.last_seen < deadline:
                    self._declare_dead(node)
            unclaimed = [
                p for p in self._placed.values() if p.claim_by is not None and p.claim_by < now
            ]
            for placed in unclaimed:
                placed.claim_by = None
            self._redispatch(unclaimed)

    def _declare_dead(self, node: Node) -> None:
        if self.nodes.get(node.node_id) is not node:
            return
        del self.nodes[node.node_id]
        lost = [p for p in self._placed.values() if p.node_id == node.node_id]
        log.warning("dispatch.node_dead", node=node.node_id, calls=len(lost))
        self._redispatch(lost)
        self._hand_builds(node.node_id)

    def _redispatch(self, lost: list[Placed]) -> None:
        for placed in lost:
            call = placed.call
            placed.call = msgspec.structs.replace(call, attempts=call.attempts + 1)
            placed.again = True  # the first run may still end: the db decides which counts
            self._place(placed)

    def _drain_backlog(self) -> None:
        while self._backlog and self.nodes:
            self._place(self._backlog.popleft())

    def fail_waiters(self, reason: str) -> None:
        """Answer every blocking client now (the api is stopping); their calls go on."""
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(Unavailable(reason))
        self._waiters.clear()
        for session_waiters in self._session_waiters.values():
            for session_future in session_waiters:
                if not session_future.done():
                    session_future.set_exception(Unavailable(reason))
        self._session_waiters.clear()

    def close(self) -> None:
        self.fail_waiters("the api stopped")
        if self._channel is not None:
            self._channel.close()
