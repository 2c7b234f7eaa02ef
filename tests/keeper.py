"""Keeper test helpers: the keeper and Debian's ZooKeeper as real processes, a raw client.

``start_server("keeper" | "zookeeper", folder)`` starts one on a free loopback port with
a data folder of its own and waits until it serves (``srvr`` names its mode). Both run with the same
tick (``TICK_MS``), so they negotiate the same session timeouts. ``RawClient`` speaks
the protocol packet by packet (through ``services.keeper.serialization``), for what
kazoo cannot show: the order of packets, malformed input, sessions left to expire.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kazoo.client import KazooClient

from fum_cli.local import free_port
from services.common.proc import python_module
from services.keeper.serialization import (
    INT,
    REPLY_HEADER,
    ConnectRequest,
    ConnectResponse,
    Reader,
    Request,
    Writer,
    encode_request,
    frame,
)

ROOT = Path(__file__).resolve().parent.parent
TICK_MS = 500  # sessions of 1 s to 10 s on both servers
ZOOKEEPER_CLASSPATH = ":".join(["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-nop.jar"])
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
SERVERS = ["keeper", "zookeeper"]


@contextmanager
def kazoo_client(hosts: str, **options: object) -> Iterator[KazooClient]:
    """A started kazoo client, stopped and closed at the end."""
    client = KazooClient(hosts, timeout=10, **options)  # type: ignore[arg-type]
    client.start(timeout=15)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def four_letter_word(host: str, port: int, word: str, timeout: float = 2.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@dataclass
class Server:
    """A keeper or ZooKeeper process on loopback."""

    kind: str
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.kind}.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Server:
        """Wait until the server serves sessions."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                # `srvr`, not `ruok`: ZooKeeper says imok while it is still loading, and
                # closes the sessions it is asked for until it serves (srvr says "Mode:")
                if "Mode:" in four_letter_word("127.0.0.1", self.port, "srvr", 1.0):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not answer within {timeout:g}s")
            time.sleep(0.05)  # polling a process that is starting, up to the deadline

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self) -> Server:
        """Start again on the same port and data (after ``stop``)."""
        self.stop()
        self.proc = _spawn(self.kind, self.folder, self.port, self.env)
        return self.wait_ready()


def _spawn(kind: str, folder: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (folder / f"{kind}.log").open("ab")
    if kind == "keeper":
        argv = python_module("services.keeper")
    else:
        config = folder / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    f"tickTime={TICK_MS}",
                    f"dataDir={folder / 'data'}",
                    f"clientPort={port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "maxClientCnxns=0",
                    "4lw.commands.whitelist=*",
                    "",
                ]
            )
        )
        argv = [
            "java",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-cp",
            ZOOKEEPER_CLASSPATH,
            ZOOKEEPER_MAIN,
            str(config),
        ]
    with log:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def start_server(kind: str, folder: Path, **settings: object) -> Server:
    """A keeper (``settings`` as FUM_KEEPER_* values) or a ZooKeeper, serving sessions."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    if kind == "keeper":
        env.update(
            {
                "FUM_KEEPER_PORT": str(port),
                "FUM_KEEPER_PATH": str(folder / "keeper.sqlite3"),
                "FUM_KEEPER_TICK_MS": str(TICK_MS),
                "FUM_LOG_LEVEL": "info",
            }
        )
        env.update({f"FUM_{k.upper()}": str(v) for k, v in settings.items()})
    return Server(kind, port, folder, _spawn(kind, folder, port, env), env).wait_ready()


class RawClient:
    """One TCP connection speaking the protocol a packet at a time (blocking, with a
    deadline on every read)."""

    def __init__(self, hosts: str, timeout: float = 5.0) -> None:
        host, port = hosts.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.xid = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_packet(self) -> bytes:
        (length,) = INT.unpack(self._read_exactly(4))
        return self._read_exactly(length)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection (within ``timeout``), reading past
        whatever it still sends."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def connect(
        self, timeout_ms: int = 10000, session_id: int = 0, passwd: bytes = bytes(16)
    ) -> ConnectResponse:
        request = ConnectRequest(0, 0, timeout_ms, session_id, passwd, False)
        w = Writer()
        request.encode(w)
        self.send_raw(frame(w.out))
        return ConnectResponse.decode(Reader(self.read_packet()))

    def send(self, request: Request, xid: int | None = None) -> int:
        if xid is None:
            self.xid += 1
            xid = self.xid
        self.send_raw(encode_request(xid, request))
        return xid

    def read_reply(self) -> tuple[int, int, int, Reader]:
        """The next packet as (xid, zxid, err, a reader of its body)."""
        packet = self.read_packet()
        xid, zxid, err = REPLY_HEADER.unpack_from(packet)
        return xid, zxid, err, Reader(packet, REPLY_HEADER.size)

    def call(self, request: Request) -> tuple[int, Reader]:
        """Send a request and read packets up to its reply (skipping events): (err, body)."""
        xid = self.send(request)
        while True:
            got, _, err, body = self.read_reply()
            if got == xid:
                return err, body
