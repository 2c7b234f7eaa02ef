"""The SDK's HTTP/1.1 client against canned answers from a bare socket server: framing
(length, chunked, to the end of the connection), keep-alive, and broken answers."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fum_client import ApiUnreachable, Client, ServerError

# A self-signed certificate for 127.0.0.1 (made with openssl req -x509, valid to 2126).
TLS = Path(__file__).parent / "tls"

Answer = Callable[[bytes], bytes | None]  # the request's bytes -> what to send back (None: close)


class Closing(bytes):
    """An answer after which the server closes the connection."""


class CannedServer:
    """Answers each request read on a connection with ``answers[i]`` in turn (one list for
    all connections); records the requests. A request is read up to its body's end."""

    def __init__(self, answers: list[Answer], tls: bool = False) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.tls: ssl.SSLContext | None = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate
                conn.close()
                return
        with conn, conn.makefile("rb") as reader:
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + reader.read(length)
                self.requests.append(request)
                answer = self.answers.pop(0)(request)
                if answer is None:
                    return
                conn.sendall(answer)
                if isinstance(answer, Closing):
                    return

    def close(self) -> None:
        self.sock.close()


Canned = Callable[..., CannedServer]


@pytest.fixture
def canned() -> Iterator[Canned]:
    servers: list[CannedServer] = []

    def make(answers: list[Answer], tls: bool = False) -> CannedServer:
        servers.append(CannedServer(answers, tls))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def ok(body: bytes, extra: bytes = b"") -> Answer:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_request_line_headers_and_keep_alive(canned: Canned) -> None:
    server = canned([ok(b'{"items": []}'), ok(b'{"items": []}')])
    with Client(server.url, api_key="k") as client:
        assert client.list_runtimes() == []
        assert client.list_functions() == []
    first = server.requests[0]
    assert first.startswith(b"GET /v1/runtimes?limit=1000 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.url.rsplit(':', 1)[1]}\r\n".encode() in first
    assert b"Authorization: Bearer k\r\n" in first and b"Accept: application/json\r\n" in first
    assert server.connections == 1, "kept alive: both requests on one connection"


def test_body_framings_and_informational_answers(canned: Canned) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"ite\r\n8\r\nms": []}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    server = canned(
        [
            lambda _: chunked,
            lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"items": []}')(b""),
            lambda _: Closing(b'HTTP/1.0 200 OK\r\n\r\n{"items": []}'),  # ends with the connection
            ok(b'{"items": []}'),
        ]
    )
    with Client(server.url) as client:
        for _ in range(4):
            assert client.list_nodes() == []
    assert server.connections == 2, "a close-delimited answer ends its connection"


def test_https(canned: Canned, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS with the system's verification: a trusted certificate works and keeps the
    connection alive; one the client does not trust is a clear error, not an answer."""
    server = canned([ok(b'{"items": []}'), ok(b'{"items": []}')], tls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "cert.pem"))  # trust it
    with Client(server.url) as client:
        assert client.list_runtimes() == []
        assert client.list_functions() == []
    assert server.connections == 1
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "absent.pem"))
    untrusted = canned([ok(b'{"items": []}')], tls=True)
    with Client(untrusted.url) as client, pytest.raises(ApiUnreachable, match="certificate"):
        client.list_runtimes()


def test_error_answer_is_raised_with_its_body(canned: Canned) -> None:
    body = b'{"error": {"code": "internal", "message": "oops"}}'
    server = canned(
        [lambda _: b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]
    )
    with Client(server.url) as client, pytest.raises(ServerError, match="oops"):
        client.list_runtimes()


def test_a_closed_kept_alive_connection_is_retried_once(canned: Canned) -> None:
    server = canned([ok(b'{"items": []}'), lambda _: None, ok(b'{"items": []}')])
    with Client(server.url) as client:
        client.list_runtimes()
        client.list_runtimes()  # the server closed the first connection: sent again, fresh
    assert server.connections == 2 and len(server.requests) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "after 5 of 50 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "within the answer's headers"),
        (b"", "without answering"),
    ],
)
def test_broken_answers_are_clear_errors(canned: Canned, answer: bytes, reason: str) -> None:
    server = canned([lambda _: Closing(answer)])
    with Client(server.url) as client, pytest.raises(ApiUnreachable, match=reason):
        client.list_runtimes()


def test_no_answer_in_time(canned: Canned) -> None:
    hold = threading.Event()

    def silent(_: bytes) -> bytes:
        hold.wait(5)
        return b""

    server = canned([silent])
    try:
        with (
            Client(server.url, timeout=0.2) as client,
            pytest.raises(ApiUnreachable, match="no answer within"),
        ):
            client.list_runtimes()
    finally:
        hold.set()
