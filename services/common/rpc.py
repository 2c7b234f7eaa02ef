"""Request/reply over ZeroMQ, in the jupyter_client way: ids on requests, deadlines on replies.

Frames are ``[routing..., payload]``. A DEALER client sends ``[request_id, payload]``; the
ROUTER peer answers with the same routing frames, so replies find their request. An empty
request id marks an event: a message that gets no reply. A plain REQ client works too
(its empty delimiter frame is echoed like any routing frame).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
import zmq
import zmq.asyncio

from .errors import FumError, Unavailable, error_from_code
from .protocol import Error, Message, Protocol

log = structlog.get_logger()

M = TypeVar("M", bound=Message)

EVENT = b""


def make_socket(
    ctx: zmq.asyncio.Context, kind: int, identity: bytes | None = None
) -> zmq.asyncio.Socket:
    """A socket that never blocks close and, for ROUTERs, refuses unknown peers loudly."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def send_soon(
    sock: zmq.asyncio.Socket, frames: list[bytes], on_error: Callable[[zmq.ZMQError], None]
) -> None:
    """Send without awaiting; a failure (a ROUTER's unknown peer, say) goes to ``on_error``.

    It goes through the asyncio socket, which queues what cannot leave now. A plain twin
    socket sending beside an asyncio receive can swallow the edge of the socket's
    notification fd, and that receive then never wakes: this was seen, as lost calls.
    """

    def done(future: asyncio.Future[object]) -> None:
        if not future.cancelled() and isinstance(future.exception(), zmq.ZMQError):
            on_error(future.exception())  # type: ignore[arg-type]

    sock.send_multipart(frames).add_done_callback(done)  # type: ignore[attr-defined]


def bound_endpoint(sock: zmq.asyncio.Socket) -> str:
    """Where a socket bound (``tcp://127.0.0.1:0`` becomes the real port)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def close_context(ctx: zmq.asyncio.Context) -> None:
    """Terminate a context once its sockets are closed and their pending callbacks ran."""
    await asyncio.sleep(0)
    ctx.destroy(linger=0)


class Client:
    """A DEALER that keeps many requests in flight and routes each reply to its waiter.

    Messages the peer sends with no request id are events, handed to ``on_event``.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        protocol: Protocol,
        *,
        identity: bytes | None = None,
        timeout: float = 10.0,
        on_event: Callable[[Message], Awaitable[None]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.timeout = timeout
        self._on_event = on_event
        self._sock = make_socket(ctx, zmq.DEALER, identity)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiters: dict[bytes, asyncio.Future[Message]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"rpc:{endpoint}")

    async def request(
        self, message: Message, reply_type: type[M], timeout: float | None = None
    ) -> M:
        """Send one request; return its typed reply or raise the error the peer reported."""
        request_id = next(self._ids).to_bytes(8, "little")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        try:
            await self._sock.send_multipart([request_id, self.protocol.encode(message)])
            deadline = self.timeout if timeout is None else timeout
            try:
                reply = await asyncio.wait_for(future, deadline)
            except TimeoutError:
                raise Unavailable(
                    f"{self.protocol.name} at {self.endpoint} did not answer "
                    f"{message.msg_type} within {deadline:g}s"
                ) from None
        finally:
            self._waiters.pop(request_id, None)
        if isinstance(reply, Error):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, reply_type):
            raise FumError(
                f"{message.msg_type}: expected {reply_type.__name__}, got {reply.msg_type}"
            )
        return reply

    async def send_event(self, message: Message) -> None:
        await self._sock.send_multipart([EVENT, self.protocol.encode(message)])

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                log.warning("rpc.bad_frames", endpoint=self.endpoint, frames=len(frames))
                continue
            request_id, payload = frames
            try:
                message = self.protocol.decode(payload)
            except FumError as exc:
                message = Protocol.error(exc)
            if request_id == EVENT:
                if self._on_event is not None:
                    await self._on_event(message)
                continue
            future = self._waiters.get(request_id)
            if future is not None and not future.done():
                future.set_result(message)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(Unavailable(f"client of {self.endpoint} closed"))
        self._sock.close()
