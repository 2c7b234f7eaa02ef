"""Latency and throughput of call creation: ``python -m services.db.bench [--sync ...]``.

Starts a real db process on a free loopback port with a fresh file, connects one DEALER,
pipelines CreateCalls requests (each with its own request id) and reports calls/s from the
first send to the last reply. Every reply is checked to be ``CallsCreated``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import uvloop
import zmq
import zmq.asyncio

from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.db_protocol import DB_PROTOCOL, CallsCreated, CreateCalls
from services.common.models import CallUpdate, NewCall
from services.common.proc import python_module

SCENARIOS = ((10_000, 1), (100, 100))  # (requests, calls per request)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def requests_of(count: int, size: int) -> list[bytes]:
    created_at = time.time()
    return [
        DB_PROTOCOL.encode(
            CreateCalls(
                calls=[
                    NewCall(
                        uuid=str(uuid.uuid4()),
                        func_name="bench",
                        params=b'{"n": 1}',
                        created_at=created_at,
                    )
                    for _ in range(size)
                ]
            )
        )
        for _ in range(count)
    ]


async def pipeline(
    ctx: zmq.asyncio.Context, endpoint: str, keys: ClusterKeys, payloads: list[bytes]
) -> float:
    """Send every payload without waiting, then wait for every reply; seconds taken.

    The client sends and drains through the plain (non-asyncio) view of its socket and
    awaits only when nothing is waiting, so what is measured is the db, not this loop.
    It never has an asyncio receive pending while it uses the plain view: a plain send
    can consume the edge of the socket's notification fd and leave that receive asleep.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    keys.client(sock).connect(endpoint)
    plain: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
    received = 0

    def drain() -> int:
        count = 0
        while True:
            try:
                _, payload = plain.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return count
            reply = DB_PROTOCOL.decode(payload)
            if not isinstance(reply, CallsCreated):
                raise SystemExit(f"unexpected reply {reply!r}")
            count += 1

    try:
        started = time.perf_counter()
        for request_id, payload in enumerate(payloads):
            plain.send_multipart([request_id.to_bytes(8, "little"), payload])
            if request_id % 1000 == 999:
                received += drain()
        async with asyncio.timeout(120):
            while received < len(payloads):
                received += drain()
                if received < len(payloads):
                    await sock.poll()
        return time.perf_counter() - started
    finally:
        sock.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sequential(client: DbClient, pid: int, count: int = 2000) -> str:
    """One create, then its final update, awaited one after the other (as a lone blocking
    invoke does): the latency of each and the db's CPU per call."""
    creates, updates = [], []
    cpu = cpu_seconds(pid)
    for _ in range(count):
        new = NewCall(uuid=uuid.uuid4().hex, func_name="bench", params=b"{}", created_at=0.0)
        t0 = time.perf_counter()
        call = await client.create_call(new)
        t1 = time.perf_counter()
        await client.update_call(
            CallUpdate(call_num=call.call_num, status="DONE", result=b"1", finished_at=1.0)
        )
        updates.append(time.perf_counter() - t1)
        creates.append(t1 - t0)
    cpu = cpu_seconds(pid) - cpu
    return (
        f"sequential: create p50 {statistics.median(creates) * 1e6:.0f} µs, "
        f"update p50 {statistics.median(updates) * 1e6:.0f} µs, "
        f"db CPU {cpu / count * 1e6:.0f} µs a call"
    )


async def bench(sync: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        keys = ClusterKeys.open(Path(folder) / "keys")  # made here, read by the db
        env = {
            **os.environ,
            "FUM_DB_BIND": endpoint,
            "FUM_KEYS_DIR": str(keys.folder),
            "FUM_DB_SYNC": sync,
            "FUM_DB_PATH": str(Path(folder) / "bench.sqlite3"),
            "FUM_LOG_LEVEL": "warning",
        }
        process = await asyncio.create_subprocess_exec(*python_module("services.db"), env=env)
        ctx = zmq.asyncio.Context()
        try:
            client = DbClient(ctx, endpoint, keys, timeout=10)
            try:
                await client.ping()
                print(f"sync={sync}: {await sequential(client, process.pid)}")
            finally:
                await client.close()
            for count, size in SCENARIOS:
                payloads = requests_of(count, size)
                seconds = await pipeline(ctx, endpoint, keys, payloads)
                print(
                    f"sync={sync}: {count} CreateCalls x {size} call(s): "
                    f"{count * size / seconds:,.0f} calls/s ({seconds * 1000:.0f} ms)"
                )
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)
            ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sync", choices=("normal", "full"), default="normal")
    uvloop.run(bench(parser.parse_args().sync))


if __name__ == "__main__":
    main()
