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
        self._arrival: asyncio.Future[None] | None = None  # someone waits for an ok
        self._pull = Channel(pull, self._on_ok, name="fum-oks")
        self._answer: asyncio.Future[list[bytes]] | None = None  # the request's reply
        self._rep: Channel | None = None
        #: the sandbox takes params and gives its result in the messages, not in files
        self.inline = False

    def _on_ok(self, frames: list[bytes]) -> None:
        self._oks.append(frames)
        arrival, self._arrival = self._arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    def _on_answer(self, frames: list[bytes]) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():  # else: of a request given up on
            answer.set_result(frames[1:])

    def _request(self, frames: list[bytes]) -> asyncio.Future[list[bytes]]:
        """Send a request to the sandbox's REP; the future of its reply's frames."""
        assert self._rep is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._rep.send([b"", *frames])
        return self._answer

    def connect(self, node_ip: str, node_port: int) -> None:
        # A DEALER, not a REQ: a call that timed out must not wedge the socket's state.
        rep = make_socket(self._ctx, zmq.DEALER)
        rep.connect(f"tcp://{node_ip}:{node_port}")
        self._rep = Channel(rep, self._on_answer, name="fum-calls")

    async def wait_setup(self) -> None:
        """The sandbox's first ``ok``: its set-up is done (and whether it goes inline)."""
        frames = await self._next_ok(None)
        self.inline = frames[4:5] == [INLINE]

    def call_inline(self, uuid: str, params: bytes) -> asyncio.Future[list[bytes]]:
        """Hand an inline call to the sandbox: the future of its report (``inline_result``
        reads it)."""
        return self._request([uuid.encode(), params])

    @staticmethod
    def inline_result(uuid: str, frames: list[bytes]) -> bytes | None:
        """An inline call's result (JSON) from its report; ``CallFailed`` if it failed."""
        if frames[:1] != [OK] or frames[2:3] != [uuid.encode()]:
            raise CallFailed(f"the function answered {frames[:3]!r} to its call")
        return _report_result(frames)

    async def run(self, uuid: str) -> bytes | None:
        """Hand the call's UUID to the sandbox and wait for its two ``ok``s; raise
        ``CallFailed``. The caller has put the params in the input folder and reads the
        output folder (unless the report carries a result)."""
        key = uuid.encode()
        answer = (await self._request([key]))[-1]
        if answer != OK:
            raise CallFailed(f"the function answered {answer[:64]!r} to its call, not 'ok'")
        return _report_result(await self._next_ok(key))

    def send_batch(self, calls: list[tuple[str, bytes]]) -> asyncio.Future[list[bytes]]:
        """Hand several calls (UUID, params) to an inline sandbox in one request: the
        future of its answer (``batch_taken`` reads it); each call's report then comes by
        ``take_report``."""
        assert self.inline
        frames: list[bytes] = []
        for uuid, params in calls:
            frames += (uuid.encode(), params)
        return self._request(frames)

    @staticmethod
    def batch_taken(frames: list[bytes]) -> bool:
        """Whether the sandbox took the batch (a library that offers inline calls but not
        batches refuses it: send it one call at a time)."""
        return frames[-1:] == [OK]

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

    def arrival(self) -> asyncio.Future[None]:
        """A future done when an ok is there to take."""
        arrival = asyncio.get_running_loop().create_future()
        if self._oks:
            arrival.set_result(None)
        else:
            self._arrival = arrival
        return arrival

    async def _next_ok(self, uuid: bytes | None) -> list[bytes]:
        """The next ``ok`` for ``uuid`` (``None``: set-up); a stale one is skipped.

        A bare ``ok`` is accepted as the one awaited. Frames: ok, node id, uuid, error,
        payload.
        """
        while True:
            if not self._oks:
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


def _report_result(frames: list[bytes]) -> bytes | None:
    """A report's result, or ``CallFailed`` with its error. Frames: ok, node id, uuid,
    error, payload."""
    if len(frames) > 3 and frames[3]:
        raise CallFailed(_error_text(frames[3]))
    return frames[4] if len(frames) > 4 else None


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
