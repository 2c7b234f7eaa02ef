"""The sync client's HTTP: a lean HTTP/1.1 client, one keep-alive connection per thread.

Why not ``http.client`` (or urllib3, or h11, which cost the same): measured on a
kept-alive connection, ``http.client`` spends about 170 µs of CPU on a small JSON
request and answer, most of it parsing headers through the ``email`` package, and it
sends the headers and the body in two TCP segments; this client spends about 45 µs, and
a warm call's latency is about 0.1 - 0.25 ms shorter (docs/PERFORMANCE.md). It speaks
what the api and any proxy in front of it answer: HTTP/1.0 and 1.1, ``Content-Length``,
chunked or close-delimited bodies, informational answers skipped, keep-alive.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar
from urllib.parse import urlencode, urlsplit

from . import _api
from ._api import Req
from .config import Settings
from .errors import ApiUnreachable, api_error

T = TypeVar("T")

Progress = Callable[[int, int], None]  # (bytes sent, total bytes)

USER_AGENT = "fum-client/0.1"
# A connection idle longer than this is not reused for a request that must not be sent
# twice (not idempotent, and without an Idempotency-Key): the api (aiohttp) closes idle
# connections after 75 s, and a request racing that close would be lost in a way that
# cannot tell "never received" from "received".
REUSE_IDLE_S = 30.0
UPLOAD_CHUNK = 64 * 1024
MAX_LINE = 65536  # the longest status or header line taken
MAX_HEADERS = 100
_PLAIN = re.compile(r"[A-Za-z0-9._~-]*\Z")  # what urlencode leaves as it is
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # sent with a Content-Length, even 0


class Disconnected(ConnectionError):
    """The api closed the connection before its answer was complete."""


class BadAnswer(OSError):
    """What came back is not HTTP."""


class _Conn:
    """One connection: its socket, a buffered reader on it, and when it was last used."""

    __slots__ = ("reader", "sock", "used_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")
        self.used_at = 0.0  # 0: never used

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        self.sock.close()

    def request(
        self, head: bytes, body: bytes | None, progress: Progress | None, method: str
    ) -> tuple[int, dict[str, str], bytes, bool]:
        """Send a request; (status, headers by lower-case name, body, will close)."""
        if body is None:
            self.sock.sendall(head)
        elif progress is None:
            self.sock.sendall(head + body)  # one segment for a small request
        else:
            self.sock.sendall(head)
            for chunk in _chunks(body, progress):
                self.sock.sendall(chunk)
        while True:
            version, status = self._status_line()
            headers = self._headers()
            if not 100 <= status < 200:
                break
        will_close = version == b"HTTP/1.0" or "close" in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", will_close
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, headers, self._chunked(), will_close
        length = headers.get("content-length")
        if length is None:  # the body ends where the connection does
            return status, headers, self.reader.read(), True
        try:
            size = int(length)
        except ValueError:
            raise BadAnswer(f"bad Content-Length {length!r}") from None
        return status, headers, self._exactly(size), will_close

    def _line(self) -> bytes:
        line = self.reader.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadAnswer("a line of the answer is too long")
        return line

    def _status_line(self) -> tuple[bytes, int]:
        line = self._line()
        if not line:
            raise Disconnected("the api closed the connection without answering")
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise BadAnswer(f"not an HTTP answer: {line[:80]!r}")
        return version, int(code)

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise Disconnected("the connection closed within the answer's headers")
            name, colon, value = line.partition(b":")
            if colon:
                key = name.strip().decode("latin-1").lower()
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        raise BadAnswer(f"more than {MAX_HEADERS} headers")

    def _exactly(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) < size:
            raise Disconnected(f"the connection closed after {len(data)} of {size} bytes")
        return data

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self._line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadAnswer(f"bad chunk size {line[:40]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            self._exactly(2)  # the chunk's CRLF


def default_headers(settings: Settings) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if settings.api_key:
        # The api does not check keys yet; a gateway in front of it may.
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


class SyncTransport:
    """Sends ``Req``s; thread-safe (each thread has its own connection)."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        parts = urlsplit(settings.api_url)
        self.url = settings.api_url
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if self._https else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._head = f"Host: {host if default_port else f'{host}:{self._port}'}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in default_headers(settings).items()
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Conn] = set()
        self._closed = False
        self.epoch: str | None = None  # the api's, from its last answer (Fum-Epoch)

    def new_key(self) -> str:
        """A new Idempotency-Key, in the api's epoch once an answer has told it."""
        return _api.idempotency_key(self.epoch)

    # ---- connections

    def _connection(self) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise ApiUnreachable(self.url, "the client is closed", maybe_sent=False)
            sock = socket.create_connection((self._host, self._port), self.timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._https:
                    context = ssl.create_default_context()
                    sock = context.wrap_socket(sock, server_hostname=self._host)
            except BaseException:
                sock.close()
                raise
            conn = _Conn(sock)
            with self._lock:
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def close(self) -> None:
        """Close every connection; a request blocked in another thread fails at once."""
        with self._lock:
            self._closed = True
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    # ---- requests

    def send(self, req: Req[T], progress: Progress | None = None) -> T:
        """Send the request; the decoded answer, or the api's error raised as ApiError."""
        status, body, retry_after = self.exchange(req, progress)
        if status >= 400:
            raise api_error(status, body, req.what, retry_after)
        return req.read(status, body)

    def exchange(
        self, req: Req[T], progress: Progress | None = None
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) of the request; ApiUnreachable if no answer came."""
        path = self._prefix + req.path
        if req.query:
            path += "?" + _query(req.query)
        head = f"{req.method} {path} HTTP/1.1\r\n{self._head}"
        if req.body is not None or req.method in BODY_METHODS:
            head += f"Content-Length: {len(req.body or b'')}\r\n"
            if req.content_type:
                head += f"Content-Type: {req.content_type}\r\n"
        if req.idempotency_key is not None:
            head += f"{_api.IDEMPOTENCY_HEADER}: {req.idempotency_key}\r\n"
        request = (head + "\r\n").encode("latin-1")
        timeout = self.timeout + (req.timeout or 0.0)
        for attempt in (1, 2):
            try:
                conn = self._connection()
            except OSError as exc:  # refused, an unknown host: this attempt was never sent
                raise ApiUnreachable(self.url, _reason(exc), maybe_sent=attempt > 1) from None
            reused = conn.used_at > 0
            if reused and not req.resendable and time.monotonic() - conn.used_at > REUSE_IDLE_S:
                self._drop(conn)
                return self.exchange(req, progress)  # on a fresh connection
            try:
                conn.sock.settimeout(timeout)
                status, headers, body, will_close = conn.request(
                    request, req.body, progress, req.method
                )
            except (Disconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(conn)
                # The api may have taken the request before the connection broke: only a
                # request that may be sent twice (by its method, or by its key) goes again.
                if reused and attempt == 1 and req.resendable and not self._closed:
                    continue  # a kept-alive connection the api had closed: once more, fresh
                raise ApiUnreachable(self.url, _reason(exc)) from None
            except TimeoutError:
                self._drop(conn)
                raise ApiUnreachable(self.url, f"no answer within {timeout:g}s") from None
            except OSError as exc:
                self._drop(conn)
                raise ApiUnreachable(self.url, _reason(exc)) from None
            if will_close:
                self._drop(conn)
            else:
                conn.used_at = time.monotonic()
            self.epoch = _api.epoch_of(headers.get("fum-epoch")) or self.epoch
            return status, body, headers.get("retry-after")
        raise AssertionError("unreachable")


def _query(query: dict[str, str]) -> str:
    """``urlencode(query)``, without its quoting where nothing needs it (``blocking=true``)."""
    if all(_PLAIN.match(k) and _PLAIN.match(v) for k, v in query.items()):
        return "&".join(f"{k}={v}" for k, v in query.items())
    return urlencode(query)


def _chunks(body: bytes, progress: Progress) -> Iterator[bytes]:
    total = len(body)
    progress(0, total)
    for start in range(0, total, UPLOAD_CHUNK):
        chunk = body[start : start + UPLOAD_CHUNK]
        yield chunk
        progress(start + len(chunk), total)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)
