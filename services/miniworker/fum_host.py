"""The host side of the FUM protocol for one launched sandbox.

The miniworker binds a PULL socket the sandbox's PUSH sends ``ok`` frames to, and connects
to the REP socket the sandbox binds, to hand it each call's UUID. A fresh pair is made on
every launch, so nothing queued for a killed sandbox can be read for the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import NamedTuple

import msgspec
import zmq

from services.common.rpc import Channel, make_socket

OK = b"ok"
INLINE = b"inline"  # a setup report's payload: calls may go inline (see libs/fum session)


class Report(NamedTuple):
    """A batched call's report: its error text or its result (JSON), and where the
    sandbox's output log stood when it ended (None: unknown)."""

    error: str | None
    result: bytes | None
    log_position: int | None


class CallFailed(Exception):
    """The sandbox reported the call failed (the error frame after its ``ok``)."""


class FumHost:
    def __init__(self, ctx: zmq.Context, bind_ip: str) -> None:
        self._ctx = ctx
        pull = make_socket(ctx, zmq.PULL)
        self.port = pull.bind_to_random_port(f"tcp://{bind_ip}")
        self._oks: deque[list[bytes]] = deque()
        self._arrived = asyncio.Event()
        self._pull = Channel(pull, self._on_ok, name="fum-oks")
        self._answers: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self._rep: Channel | None = None
        #: the sandbox takes params and gives its result in the messages, not in files
        self.inline = False

    def _on_ok(self, frames: list[bytes]) -> None:
        self._oks.append(frames)
        self._arrived.set()

    def connect(self, node_ip: str, node_port: int) -> None:
        # A DEALER, not a REQ: a call that timed out must not wedge the socket's state.
        rep = make_socket(self._ctx, zmq.DEALER)
        rep.connect(f"tcp://{node_ip}:{node_port}")
        self._rep = Channel(rep, self._answers.put_nowait, name="fum-calls")

    async def wait_setup(self) -> None:
        """The sandbox's first ``ok``: its set-up is done (and whether it goes inline)."""
        frames = await self._next_ok(None)
        self.inline = frames[4:5] == [INLINE]

    async def run(self, uuid: str, params: bytes) -> bytes | None:
        """Hand the call to the sandbox and wait for its two ``ok``s; raise ``CallFailed``.
        Inline, ``params`` go with the UUID and the result (JSON) is returned; else the
        caller has put the params in the input folder and reads the output folder."""
        assert self._rep is not None
        key = uuid.encode()
        if self.inline:  # the reply is the call's report
            self._rep.send([b"", key, params])
            frames = (await self._answers.get())[1:]
            if frames[:1] != [OK] or frames[2:3] != [key]:
                raise CallFailed(f"the function answered {frames[:3]!r} to its call")
        else:
            self._rep.send([b"", key])
            answer = (await self._answers.get())[-1]
            if answer != OK:
                raise CallFailed(f"the function answered {answer[:64]!r} to its call, not 'ok'")
            frames = await self._next_ok(key)
        if len(frames) > 3 and frames[3]:
            raise CallFailed(_error_text(frames[3]))
        return frames[4] if len(frames) > 4 else None

    def send_batch(self, calls: list[tuple[str, bytes]]) -> None:
        """Hand several calls (UUID, params) to an inline sandbox in one request; then
        ``batch_taken``, and each call's report comes by ``take_report``."""
        assert self._rep is not None and self.inline
        frames = [b""]
        for uuid, params in calls:
            frames += (uuid.encode(), params)
        self._rep.send(frames)

    async def batch_taken(self) -> None:
        """The sandbox's answer to a batch; ``CallFailed`` if it refused it (a library
        that offers inline calls but not batches: send it one call at a time)."""
        answer = (await self._answers.get())[-1]
        if answer != OK:
            raise CallFailed(f"the function answered {answer[:64]!r} to a batch, not 'ok'")

    def take_report(self, uuid: str) -> Report | None:
        """The report of the batched call ``uuid`` if it has come (stale ones skipped)."""
        key = uuid.encode()
        while self._oks:
            frames = self._oks.popleft()
            if frames[0] != OK or len(frames) < 3 or frames[2] != key:
                continue
            error = _error_text(frames[3]) if len(frames) > 3 and frames[3] else None
            result = frames[4] if len(frames) > 4 and frames[4] else None
            position = frames[5] if len(frames) > 5 else b""
            return Report(error, result, int(position) if position.isdigit() else None)
        return None

    async def arrival(self) -> None:
        """Wait until a report is there to take."""
        while not self._oks:
            self._arrived.clear()
            await self._arrived.wait()

    async def _next_ok(self, uuid: bytes | None) -> list[bytes]:
        """The next ``ok`` for ``uuid`` (``None``: set-up); a stale one is skipped.

        A bare ``ok`` is accepted as the one awaited. Frames: ok, node id, uuid, error,
        payload.
        """
        while True:
            await self.arrival()
            frames = self._oks.popleft()
            if frames[0] != OK:
                continue
            if len(frames) < 3 or frames[2] == (uuid or b""):
                return frames

    def close(self) -> None:
        self._pull.close()
        if self._rep is not None:
            self._rep.close()


class _Report(msgspec.Struct):
    type: str = "Error"
    message: str = ""
    traceback: str = ""


def _error_text(frame: bytes) -> str:
    try:
        report = msgspec.json.decode(frame, type=_Report)
    except msgspec.MsgspecError:
        return frame.decode("utf-8", "replace")
    text = f"{report.type}: {report.message}"
    return f"{text}\n{report.traceback.rstrip()}" if report.traceback else text
