"""The container side of the FUM protocol: one Session per function process."""

from __future__ import annotations

import atexit
import io
import json
import os
import stat
import sys
import traceback
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

DEFAULT_INPUT_DIR = "/input/input"
DEFAULT_OUTPUT_DIR = "/output/output"
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"

OK = b"ok"
# A setup report carries an empty UUID frame, so the host can tell it from a call's report.
SETUP_UUID = b""
# Reports are ok, node id, UUID, then optionally an error report (empty: none) and a
# payload. A session that takes its params and gives its result in the messages
# ("inline", no files) says so in its setup report's payload; the host may then send a
# call as two frames, UUID and params, and the report, result included, is the reply to
# that request (two messages a call instead of three). To such a session the host may
# also send several calls in one request (UUID, params, UUID, params, ...): the reply is
# a bare ok, and each call's report then goes by PUSH as it ends, with one more frame,
# where the output log stood when the call ended (empty when stdout is not a file).
INLINE = b"inline"
# Long enough to flush the last report to a live host, short enough that a process whose
# host is gone still exits promptly.
PUSH_LINGER_MS = 2000


def tcp_address(host: str, port: int) -> str:
    """Return the ZeroMQ tcp endpoint for host and port (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def error_report(error: BaseException | str) -> dict[str, str]:
    """Return the JSON-able error report for an exception or a plain message."""
    if isinstance(error, BaseException):
        return {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            ),
        }
    return {"type": "CallFailed", "message": str(error), "traceback": ""}


def _port(environ: Mapping[str, str], name: str) -> int | None:
    """Read an optional port number from the environment."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {value!r}") from None


# pyzmq's flags are Enums, and send_multipart/recv_multipart do Enum arithmetic and a
# getsockopt on every frame: more than the send itself, on every call.
_SNDMORE = int(zmq.SNDMORE)


def _send(socket: zmq.Socket[bytes], frames: list[bytes]) -> None:
    for frame in frames[:-1]:
        socket.send(frame, _SNDMORE)
    socket.send(frames[-1])


def _receive(socket: zmq.Socket[bytes]) -> list[bytes]:
    frames = []
    while True:
        frame = socket.recv(copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


def _log_position() -> bytes:
    """The size of the file stdout writes to (the run command's log), as ASCII digits;
    empty when stdout is not a regular file."""
    try:
        info = os.fstat(1)
    except OSError:
        return b""
    return str(info.st_size).encode() if stat.S_ISREG(info.st_mode) else b""


def _whole_lines() -> None:
    """Write stdout and stderr a line at a time: unbuffered (``PYTHONUNBUFFERED``, as fum
    starts functions) each ``print`` is several writes, and the two streams' pieces mix."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, write_through=False)


class Session:
    """This container's FUM state: its environment, its sockets and the call in progress."""

    def __init__(
        self,
        node_id: str = "",
        node_ip: str | None = None,
        node_port: int | None = None,
        host_ip: str | None = None,
        host_port: int | None = None,
        input_dir: str = DEFAULT_INPUT_DIR,
        output_dir: str = DEFAULT_OUTPUT_DIR,
    ) -> None:
        self.node_id = node_id
        self.node_ip = node_ip
        self.node_port = node_port
        self.host_ip = host_ip
        self.host_port = host_port
        self.input_dir = input_dir
        self.output_dir = output_dir
        #: offer the inline mode (handler mode does: its params and result go through
        #: params() and result(); a script that reads the files itself must not)
        self.inline = False
        self._params: bytes | None = None  # the current call's inline params
        self._result: bytes | None = None  # the current call's result, to send inline
        self._batch: deque[tuple[str, bytes]] = deque()  # calls of a batch not begun yet
        self._batched = False  # the current call came in a batch: its report is pushed
        # The UUID of the call being worked on; None during setup and while waiting.
        self.current_uuid: str | None = None
        self._error: dict[str, str] | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._rep: zmq.Socket[bytes] | None = None
        self._push: zmq.Socket[bytes] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Session:
        """Build a Session from the FUM_* and input_dir/output_dir environment variables."""
        env = os.environ if environ is None else environ
        return cls(
            node_id=env.get("FUM_NODE_ID", ""),
            node_ip=env.get("FUM_NODE_IP") or None,
            node_port=_port(env, "FUM_NODE_PORT"),
            host_ip=env.get("FUM_HOST_IP") or None,
            host_port=_port(env, "FUM_HOST_PORT"),
            input_dir=env.get("input_dir") or DEFAULT_INPUT_DIR,
            output_dir=env.get("output_dir") or DEFAULT_OUTPUT_DIR,
        )

    @property
    def host_id(self) -> str | None:
        """The host's address; the original design's name for host_ip."""
        return self.host_ip

    def __repr__(self) -> str:
        return (
            f"Session(node_id={self.node_id!r}, node={self.node_ip}:{self.node_port}, "
            f"host={self.host_ip}:{self.host_port}, current_uuid={self.current_uuid!r})"
        )

    # -- the protocol -------------------------------------------------------------

    def fum_yield(self) -> str:
        """Report setup (first time) or the previous call done, then wait for the next UUID."""
        if self._push is None:
            self._open()
            self._report(SETUP_UUID)
        elif self.current_uuid is not None:
            self._report(self.current_uuid.encode("ascii"))
        self.current_uuid = None
        self._error = None
        self._params = self._result = None
        self.current_uuid = self._receive_uuid()
        return self.current_uuid

    def fail(self, error: BaseException | str) -> None:
        """Mark the current call failed; the report goes with the call's done message."""
        if self.current_uuid is None:
            raise RuntimeError("fum.fail() called outside a call (before fum_yield())")
        self._error = error_report(error)

    def close(self) -> None:
        """Close the sockets, flushing a pending report for up to PUSH_LINGER_MS."""
        for socket in (self._rep, self._push):
            if socket is not None:
                socket.close()
        if self._context is not None:
            self._context.term()
        self._context = self._rep = self._push = None

    def _open(self) -> None:
        """Bind the REP socket for UUIDs and connect the PUSH socket to the host."""
        if self.node_port is None:
            raise RuntimeError("FUM_NODE_PORT is not set: not running under a fum host?")
        if self.host_ip is None or self.host_port is None:
            raise RuntimeError("FUM_HOST_IP/FUM_HOST_PORT are not set: not under a fum host?")
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        rep = context.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, PUSH_LINGER_MS)
        try:
            self._bind(rep)
            host = tcp_address(self.host_ip, self.host_port)
            if host.startswith("tcp://["):
                push.setsockopt(zmq.IPV6, 1)
            push.connect(host)
        except BaseException:
            rep.close(linger=0)
            push.close(linger=0)
            context.term()
            raise
        self._context, self._rep, self._push = context, rep, push
        _whole_lines()
        atexit.register(self._at_exit)
        self._hook_uncaught_exceptions()

    def _bind(self, rep: zmq.Socket[bytes]) -> None:
        """Bind on FUM_NODE_IP, or on every interface when that is not a local address."""
        assert self.node_port is not None
        if self.node_ip:
            address = tcp_address(self.node_ip, self.node_port)
            try:
                if address.startswith("tcp://["):
                    rep.setsockopt(zmq.IPV6, 1)
                rep.bind(address)
                return
            except zmq.ZMQError:
                pass  # e.g. a hostname, which bind() does not resolve: fall back to all interfaces
        rep.bind(f"tcp://*:{self.node_port}")

    def _report(self, uuid: bytes) -> None:
        """PUSH ok, node id and UUID to the host, plus the error report if the call failed."""
        assert self._push is not None
        for stream in (sys.stdout, sys.stderr):  # what the call printed goes before its ok
            stream.flush()
        frames = [OK, self.node_id.encode(), uuid]
        error = json.dumps(self._error).encode() if self._error is not None else b""
        payload = INLINE if uuid == SETUP_UUID and self.inline else self._result
        if self._batched:  # every frame, then where the output log stands
            _send(self._push, [*frames, error, payload or b"", _log_position()])
            return
        if error or payload is not None:
            frames.append(error)
        if payload is not None:
            frames.append(payload)
        if self._params is not None and self._rep is not None:
            _send(self._rep, frames)  # an inline call: its request awaits this
        else:
            _send(self._push, frames)

    def _receive_uuid(self) -> str:
        """Block until the host sends a call UUID on REP, answer ok and return it (or
        take the next call of a batch)."""
        assert self._rep is not None
        if self._batch:
            uuid, self._params = self._batch.popleft()
            return uuid
        while True:
            frames = _receive(self._rep)
            if self.inline and len(frames) >= 4 and len(frames) % 2 == 0:
                return self._begin_batch(frames)
            self._batched = False
            inline = self.inline and len(frames) == 2
            try:
                uuid = frames[0].decode("ascii").strip() if len(frames) == 1 or inline else ""
            except UnicodeDecodeError:
                uuid = ""
            if uuid:
                self._params = frames[1] if inline else None
                if not inline:
                    self._rep.send(OK)  # an inline call is answered by its report
                return uuid
            # REP must answer every request; a malformed one is refused, not taken as a call.
            self._rep.send(b"error")

    def _begin_batch(self, frames: list[bytes]) -> str:
        """Take a batch (UUID, params, ...): answer ok, and start on its first call."""
        assert self._rep is not None
        try:
            calls = [(frames[i].decode("ascii"), frames[i + 1]) for i in range(0, len(frames), 2)]
        except UnicodeDecodeError:
            calls = []
        if not calls or not all(uuid for uuid, _ in calls):
            self._rep.send(b"error")
            return self._receive_uuid()
        self._rep.send(OK)
        self._batched = True
        self._batch.extend(calls[1:])
        uuid, self._params = calls[0]
        return uuid

    def _hook_uncaught_exceptions(self) -> None:
        """Record an exception that kills the process mid-call as that call's error."""
        previous = sys.excepthook

        def hook(
            exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
        ) -> None:
            if self.current_uuid is not None:
                self._error = error_report(exc)
            previous(exc_type, exc, tb)

        sys.excepthook = hook

    def _at_exit(self) -> None:
        """Report the error of a call an uncaught exception ended, then flush and close.

        Any other end of the process inside a call (``SystemExit``, ``sys.exit(3)``, the
        end of the script) reports nothing: the call is not done, and the host, which sees
        the process end, makes it an error with the exit status and the tail of the output
        (and may run it again). ``os._exit`` and signals never get here.
        """
        if self._push is not None and self.current_uuid is not None and self._error is not None:
            self._report(self.current_uuid.encode("ascii"))
        self.current_uuid = None
        self.close()

    # -- files ------------------------------------------------------------------------

    def input_path(self, name: str) -> Path:
        """Return the path of a file the host sent with the call."""
        return Path(self.input_dir) / name

    def output_path(self, name: str) -> Path:
        """Return the path for an output file, creating output_dir if needed."""
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        return Path(self.output_dir) / name

    def params(self) -> Any:
        """Return the call's parameters from input_dir/params.json ({} if there is none),
        or from the call's message in the inline mode."""
        if self._params is not None:
            text = self._params.decode("utf-8")
        else:
            try:
                text = self.input_path(PARAMS_FILE).read_text(encoding="utf-8")
            except FileNotFoundError:
                return {}
        return json.loads(text) if text.strip() else {}

    def result(self, value: Any) -> None:
        """Write the call's result as JSON to output_dir/result.json (inline mode: keep it
        for the call's report)."""
        # Encode first, so a value that is not JSON-able leaves no half-written file.
        text = json.dumps(value, separators=(",", ":"))  # compact, as the original "[4,6,4,3]"
        if self._params is not None:  # the call came inline: so goes its result
            self._result = text.encode("utf-8")
        else:
            self.output_path(RESULT_FILE).write_text(text, encoding="utf-8")
