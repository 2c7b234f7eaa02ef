"""Request/reply over ZeroMQ, in the jupyter_client way: ids on requests, deadlines on replies.

Frames are ``[routing..., payload]``. A DEALER client sends ``[request_id, payload]``; the
ROUTER peer answers with the same routing frames, so replies find their request. An empty
request id marks an event: a message that gets no reply. A plain REQ client works too
(its empty delimiter frame is echoed like any routing frame).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import structlog
import zmq
from zmq.utils.monitor import parse_monitor_message

from .errors import FumError, Unavailable, error_from_code
from .protocol import Error, Message, Protocol

if TYPE_CHECKING:  # not imported by processes that have no control-plane client
    from .curve import ClusterKeys

log = structlog.get_logger()

M = TypeVar("M", bound=Message)

EVENT = b""


POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
# Plain ints: pyzmq's flags are Enums, and their arithmetic (and its RCVMORE lookups) cost
# more than the send or receive itself.
NOBLOCK, NOBLOCK_MORE, EVENTS = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE), int(zmq.EVENTS)
# Messages a channel reads in one go before it lets the rest of the loop run.
READ_BATCH = 500


S = TypeVar("S", bound=zmq.Socket)


def configure(sock: S, kind: int, identity: bytes | None = None) -> S:
    """Never block close; for ROUTERs, refuse unknown peers loudly; deep queues; a peer
    that is not up yet is tried again soon."""
    sock.setsockopt(zmq.LINGER, 0)
    # ZeroMQ tries an absent peer again every 100 ms: at start-up each service waited up to
    # that long after the one it connects to was bound. 10 ms doubling up to the same 100 ms:
    # sooner at first, never later than before.
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def make_socket(ctx: zmq.Context, kind: int, identity: bytes | None = None) -> zmq.Socket:
    """A plain socket, configured, for a ``Channel``."""
    return configure(zmq.Socket(ctx, kind), kind, identity)


class Channel:
    """A ZeroMQ socket driven by the event loop, with no future per message.

    ``on_frames`` is called with every message that arrives, in order, from the loop.
    The socket's file descriptor is edge-triggered and any operation on the socket can
    consume its edge, so a wake-up reads everything waiting, and every send is followed,
    in the same loop turn, by a look at the socket's events. pyzmq's asyncio sockets do
    the same with a Future, several getsockopt calls and Enum arithmetic per message:
    measured, that was a third of every service's CPU (docs/PERFORMANCE.md).
    """

    def __init__(
        self,
        sock: zmq.Socket,
        on_frames: Callable[[list[bytes]], None],
        name: str = "",
    ) -> None:
        self.sock = sock
        self.name = name
        self._on_frames = on_frames
        self._loop = asyncio.get_running_loop()
        self._out: deque[list[bytes]] = deque()  # what the socket could not take yet
        # events of this loop turn, by routing prefix: they leave as one message each
        self._batches: dict[tuple[bytes, ...], tuple[list[bytes], Callable[..., None]]] = {}
        self._look_soon = False
        self._closed = False
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._service)
        self._look()

    def send_event(
        self,
        prefix: list[bytes],
        payload: bytes,
        on_error: Callable[[zmq.ZMQError], None] = lambda exc: None,
    ) -> None:
        """Send ``prefix + [payload]`` at the end of this loop turn, together with the other
        events for the same prefix: one ZeroMQ message ``prefix + [payload, ...]`` (the
        receiver reads every frame after the prefix as a message). Under load a burst of
        calls to one worker is one message, not one each. Order is kept: a plain ``send``
        first sends the events before it."""
        key = tuple(prefix)
        batch = self._batches.get(key)
        if batch is None:
            if not self._batches:
                self._loop.call_soon(self._flush)
            self._batches[key] = ([payload], on_error)
        else:
            batch[0].append(payload)

    def _flush(self) -> None:
        batches, self._batches = self._batches, {}
        for key, (payloads, on_error) in batches.items():
            try:
                self.send([*key, *payloads])
            except zmq.ZMQError as exc:
                on_error(exc)

    def send(self, frames: list[bytes], wait: bool = True) -> None:
        """Send now, or (in order) as soon as the socket can take it. Raises ZMQError when
        the socket refuses it outright (a ROUTER's unknown peer: EHOSTUNREACH), or, with
        ``wait=False``, when it cannot take it now (a peer that stopped reading)."""
        if self._closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, f"channel {self.name} is closed")
        if self._batches:
            self._flush()
        if self._out:
            if not wait:
                raise zmq.Again()
            self._out.append(frames)
        else:
            try:
                send_frames(self.sock, frames)
            except zmq.Again:
                if not wait:
                    raise
                self._out.append(frames)
        self._look()

    def close(self, linger_ms: int = 0) -> None:
        """Stop reading and close the socket, giving what it holds ``linger_ms`` to leave."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=linger_ms)

    def _look(self) -> None:
        """After a send: read what the send's look at the socket may have left unread (its
        edge consumed). One EVENTS read now is cheaper than a callback that finds nothing."""
        if self._look_soon or self._closed:
            return
        if self._out or int(self.sock.get(EVENTS)) & POLLIN:
            self._look_soon = True
            self._loop.call_soon(self._service)

    def _service(self) -> None:
        self._look_soon = False
        sock = self.sock
        for _ in range(READ_BATCH):
            if self._closed:
                return
            events = int(sock.get(EVENTS))
            if self._out and events & POLLOUT:
                frames = self._out.popleft()
                try:
                    send_frames(sock, frames)
                except zmq.Again:
                    self._out.appendleft(frames)
                except zmq.ZMQError as exc:
                    log.warning("rpc.send_failed", channel=self.name, error=str(exc))
                continue
            if not events & POLLIN:
                return
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            try:
                self._on_frames(frames)
            except Exception:
                log.exception("rpc.handler_failed", channel=self.name)
        self._look_soon = True  # more is waiting: after the rest of the loop has had its turn
        self._loop.call_soon(self._service)


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """``sock.send_multipart(frames, NOBLOCK)``, without its per-frame checks and Enums
    (a multipart message is taken whole or not at all: only the first frame can raise
    Again)."""
    send = sock.send
    for frame in frames[:-1]:
        send(frame, NOBLOCK_MORE)
    send(frames[-1], NOBLOCK)


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """``sock.recv_multipart(NOBLOCK)``, reading each frame's more flag from the frame
    instead of a getsockopt each."""
    frames = []
    while True:
        frame = sock.recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


def bound_endpoint(sock: zmq.Socket) -> str:
    """Where a socket bound (``tcp://127.0.0.1:0`` becomes the real port)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def close_context(ctx: zmq.Context) -> None:
    """Terminate a context once its sockets are closed and their pending callbacks ran."""
    await asyncio.sleep(0)
    ctx.destroy(linger=0)


# What a failed CURVE handshake tells a client (the monitor's events), for its log and errors.
HANDSHAKE_FAILURES = {
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the peer refused this process's client key",
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "the CURVE handshake failed (a wrong server key?)",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "the peer does not speak CURVE with these keys",
}
HANDSHAKE_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
for _event in HANDSHAKE_FAILURES:
    HANDSHAKE_EVENTS |= _event
_monitors = itertools.count()


class Client:
    """A DEALER of the control plane (a CURVE client with ``keys``) that keeps many
    requests in flight and routes each reply to its waiter.

    Messages the peer sends with no request id are events, handed to ``on_event``.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        protocol: Protocol,
        *,
        keys: ClusterKeys,
        identity: bytes | None = None,
        timeout: float = 10.0,
        on_event: Callable[[Message], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.timeout = timeout
        self._on_event = on_event
        sock = keys.client(make_socket(ctx, zmq.DEALER, identity))
        # A refused handshake is otherwise silence: the monitor says why (once per change).
        self._keys_folder = keys.folder
        self.handshake_failure = ""
        monitor = f"inproc://fum-handshakes-{next(_monitors)}"
        sock.monitor(monitor, HANDSHAKE_EVENTS)
        events = make_socket(ctx, zmq.PAIR)
        events.connect(monitor)
        self._monitor = Channel(events, self._on_handshake, name="handshakes")
        sock.connect(endpoint)
        self._channel = Channel(sock, self._on_frames, name=f"{protocol.name}@{endpoint}")
        self._ids = itertools.count(1)
        self._waiters: dict[bytes, asyncio.Future[Message]] = {}

    async def request(
        self, message: Message, reply_type: type[M], timeout: float | None = None
    ) -> M:
        """Send one request; return its typed reply or raise the error the peer reported."""
        request_id = next(self._ids).to_bytes(8, "little")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        try:
            self._channel.send([request_id, self.protocol.encode(message)])
            deadline = self.timeout if timeout is None else timeout
            try:
                reply = await asyncio.wait_for(future, deadline)
            except TimeoutError:
                why = f" ({self.handshake_failure})" if self.handshake_failure else ""
                raise Unavailable(
                    f"{self.protocol.name} at {self.endpoint} did not answer "
                    f"{message.msg_type} within {deadline:g}s{why}"
                ) from None
        except zmq.ZMQError as exc:
            raise Unavailable(f"{self.protocol.name} at {self.endpoint}: {exc}") from None
        finally:
            self._waiters.pop(request_id, None)
        if isinstance(reply, Error):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, reply_type):
            raise FumError(
                f"{message.msg_type}: expected {reply_type.__name__}, got {reply.msg_type}"
            )
        return reply

    def send_event(self, message: Message) -> None:
        """Send a message that gets no reply, with the other events of this loop turn."""
        self._channel.send_event([EVENT], self.protocol.encode(message))

    def _on_handshake(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        failure = HANDSHAKE_FAILURES.get(int(event["event"]), "")
        if failure and failure != self.handshake_failure:
            log.warning(
                "rpc.handshake_failed",
                endpoint=self.endpoint,
                reason=failure,
                keys=str(self._keys_folder),
            )
        self.handshake_failure = failure

    def _decode(self, payload: bytes) -> Message:
        try:
            return self.protocol.decode(payload)
        except FumError as exc:
            return Protocol.error(exc)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            log.warning("rpc.bad_frames", endpoint=self.endpoint, frames=len(frames))
            return
        request_id, *payloads = frames
        if request_id == EVENT:  # one or more events
            for payload in payloads:
                message = self._decode(payload)
                if self._on_event is not None:
                    self._on_event(message)
            return
        message = self._decode(payloads[-1])
        future = self._waiters.get(request_id)
        if future is not None and not future.done():
            future.set_result(message)

    async def close(self) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(Unavailable(f"client of {self.endpoint} closed"))
        self._channel.sock.monitor(None, 0)
        self._monitor.close()
        self._channel.close()
