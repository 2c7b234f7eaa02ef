"""The sync client's HTTP: ``http.client`` with one keep-alive connection per thread.

Why not a third-party client: a sync request here costs tens of microseconds over a
kept-alive connection (the executor's latency is two of them per call), it adds no
dependency, and the api speaks plain HTTP/1.1 JSON.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

from ._api import Req
from .config import Settings
from .errors import ApiUnreachable, api_error

T = TypeVar("T")

Progress = Callable[[int, int], None]  # (bytes sent, total bytes)

USER_AGENT = "fum-client/0.1"
# A connection idle longer than this is not reused for a request that must not be sent
# twice: the api (aiohttp) closes idle connections after 75 s, and a request racing
# that close would be lost in a way that cannot tell "never received" from "received".
REUSE_IDLE_S = 30.0
UPLOAD_CHUNK = 64 * 1024


class _Conn:
    __slots__ = ("conn", "used_at")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.used_at = 0.0  # 0: never used


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
        self._headers = default_headers(settings)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Conn] = set()
        self._closed = False

    # ---- connections

    def _connection(self) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = _Conn(cls(self._host, self._port, timeout=self.timeout))
            with self._lock:
                if self._closed:
                    raise ApiUnreachable(self.url, "the client is closed", maybe_sent=False)
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _drop(self, conn: _Conn) -> None:
        conn.conn.close()
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
            sock = conn.conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            conn.conn.close()

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
            path += "?" + urlencode(req.query)
        headers = dict(self._headers)
        if req.body is not None:
            headers["Content-Length"] = str(len(req.body))
            if req.content_type:
                headers["Content-Type"] = req.content_type
        timeout = self.timeout + (req.timeout or 0.0)
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.used_at > 0
            if reused and not req.idempotent and time.monotonic() - conn.used_at > REUSE_IDLE_S:
                self._drop(conn)
                conn, reused = self._connection(), False
            try:
                status, body, retry_after, will_close = self._once(
                    conn, req, path, headers, timeout, progress
                )
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.BadStatusLine,
            ) as exc:
                self._drop(conn)
                if reused and attempt == 1 and not self._closed:
                    continue  # a kept-alive connection the api had closed: once more, fresh
                raise ApiUnreachable(self.url, _reason(exc)) from None
            except TimeoutError:
                self._drop(conn)
                raise ApiUnreachable(self.url, f"no answer within {timeout:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                # Refused or an unknown host: the connection was never made.
                unsent = isinstance(exc, ConnectionRefusedError | socket.gaierror)
                raise ApiUnreachable(self.url, _reason(exc), maybe_sent=not unsent) from None
            if will_close:
                self._drop(conn)
            else:
                conn.used_at = time.monotonic()
            return status, body, retry_after
        raise AssertionError("unreachable")

    def _once(
        self,
        conn: _Conn,
        req: Req[T],
        path: str,
        headers: dict[str, str],
        timeout: float,
        progress: Progress | None,
    ) -> tuple[int, bytes, str | None, bool]:
        c = conn.conn
        if c.sock is None:
            c.timeout = self.timeout
            c.connect()
            assert c.sock is not None
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert c.sock is not None
        c.sock.settimeout(timeout)
        body = req.body
        if body is not None and progress is not None:
            c.request(req.method, path, body=_chunks(body, progress), headers=headers)
        else:
            c.request(req.method, path, body=body, headers=headers)
        response = c.getresponse()
        data = response.read()
        return response.status, data, response.getheader("Retry-After"), bool(response.will_close)


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
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the api closed the connection without answering"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)
