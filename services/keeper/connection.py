"""One client connection: framing, the session handshake, then requests in order.

The first packet is a ``ConnectRequest`` (or a four-letter command such as ``ruok``,
answered as ZooKeeper does, then the connection closes). Every later packet is a
request, handed to the server in the order it came; the server answers it through
``queue`` (now, or once the writes before it are durable). A frame whose length is
negative or past ``MAX_PACKET``, or a handshake that does not decode, closes the
connection at once; a request body that does not decode gets ``MarshallingError``, as
from ZooKeeper; a request type the keeper does not serve gets ``Unimplemented`` and the
connection closes (ZooKeeper's UnimplementedRequestProcessor).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from .exceptions import Unimplemented
from .serialization import (
    INT,
    INT_INT,
    MAX_PACKET,
    REQUESTS,
    ConnectRequest,
    Id,
    MalformedPacket,
    Reader,
    reply,
    watcher_event,
)

if TYPE_CHECKING:
    from .server import KeeperServer
    from .session import Session

log = structlog.get_logger()

# ZooKeeper's four-letter words, read in place of the first length
FOUR_LETTER_WORDS = {INT.unpack(word)[0]: word.decode() for word in (b"ruok", b"srvr", b"envi")}


class Connection(asyncio.Protocol):
    """A client's TCP connection; attached to a session once the handshake is done."""

    def __init__(self, server: KeeperServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.auth: list[Id] = []
        self.watched: set[tuple[bool, str]] = set()
        self.peer = ""
        self.closed = False
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._handshaken = False
        self._paused = False

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.auth = [Id("ip", self.peer)]
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.lost(self)

    def pause_writing(self) -> None:
        # A client that does not read its replies stops being read (backpressure).
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= 4 and not self.closed:
                (length,) = INT.unpack_from(buffer, offset)
                if not self._handshaken and length in FOUR_LETTER_WORDS:
                    self._four_letter_word(FOUR_LETTER_WORDS[length])
                    return
                if length < 0 or length > MAX_PACKET:
                    self.abort(f"packet length {length} out of bounds")
                    return
                if end - offset - 4 < length:
                    break
                packet = bytes(buffer[offset + 4 : offset + 4 + length])
                offset += 4 + length
                self._packet(packet)
        finally:
            del buffer[:offset]
            self.server.kick()

    # ---- packets

    def _packet(self, packet: bytes) -> None:
        if not self._handshaken:
            try:
                connect = ConnectRequest.decode(Reader(packet))
            except MalformedPacket as exc:
                self.abort(f"a malformed connect request: {exc}")
                return
            self._handshaken = True
            read_only_sent = len(packet) > 28 + len(connect.passwd)
            self.server.connect(self, connect, read_only_sent)
            return
        if len(packet) < 8:
            self.abort("a request shorter than its header")
            return
        xid, kind = INT_INT.unpack_from(packet)
        request_type = REQUESTS.get(kind)
        if request_type is None:
            self.queue(reply(xid, 0, Unimplemented.code))
            self.close_after_replies()
            return
        try:
            request = request_type.decode(Reader(packet, 8))
        except MalformedPacket as exc:
            log.info("keeper.malformed_request", peer=self.peer, type=kind, reason=str(exc))
            self.server.malformed(self, xid, request_type)
            return
        self.server.handle(self, xid, request)

    def _four_letter_word(self, word: str) -> None:
        assert self.transport is not None
        self.transport.write(self.server.four_letter_word(word).encode())
        self.closed = True
        self.transport.close()

    # ---- output

    def queue(self, data: bytes) -> None:
        """Send ``data`` in order with every reply before it (the server may hold them
        until the writes before them are durable)."""
        self.server.send(self, data)

    def notify(self, kind: int, path: str) -> None:
        """A watch of this connection fired (watches.Watcher)."""
        self.server.send(self, watcher_event(kind, path))

    def close_after_replies(self) -> None:
        """Close once what is queued before now has been sent."""
        self.server.send(self, None)

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def close(self) -> None:
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """Close at once, without a reply: the client broke the protocol."""
        log.info("keeper.connection_dropped", peer=self.peer, reason=reason)
        self._out.clear()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
