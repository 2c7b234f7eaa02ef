"""The least a warm call can cost on this machine: an HTTP request relayed through N
processes and back, with no work done anywhere, printed as JSON.

    .venv/bin/python bench/floor.py [--hops 0,1,2,3] [--calls 5000]

Each process is what fum's services are made of (uvloop, ``rpc.Channel`` on ZeroMQ over
TCP on loopback), doing nothing but passing the message on: a front process serves
HTTP with aiohttp and sends each request's body to the first relay over a DEALER; each
relay passes it on to the next (ROUTER in, DEALER out) and the replies back; the last
one echoes, and the front answers a finished call's JSON. The client is the SDK's
``Client.invoke`` over one kept-alive connection, as in ``bench/invoke.py``.
``--hops 3`` is the shape of fum's warm call: api → worker → miniworker → function
and back. The difference between hops is what a process on the path costs by
itself, before any of fum's work (docs/PERFORMANCE.md, "The floor").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop
import zmq
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_client import Client
from services.common import rpc

# What the front answers, as fum's api answers a finished blocking invoke (in short).
CALL = b'{"callNum": 1, "funcName": "noop", "status": "DONE", "params": {}, "result": null}'


def _bind(ctx: zmq.Context, kind: int) -> tuple[zmq.Socket, str]:
    sock = rpc.make_socket(ctx, kind)
    sock.bind("tcp://127.0.0.1:0")
    return sock, rpc.bound_endpoint(sock)


def _echo(ready: Connection) -> None:
    async def main() -> None:
        sock, endpoint = _bind(zmq.Context(), zmq.ROUTER)
        channel = rpc.Channel(sock, lambda frames: channel.send(frames))
        ready.send(endpoint)
        await asyncio.Event().wait()

    uvloop.run(main())


def _relay(ready: Connection, upstream: str) -> None:
    """ROUTER in, DEALER out: a request goes on with its routing frames as data, the
    reply comes back with them and is routed by the first."""

    async def main() -> None:
        ctx = zmq.Context()
        front_sock, endpoint = _bind(ctx, zmq.ROUTER)
        back_sock = rpc.make_socket(ctx, zmq.DEALER)
        back_sock.connect(upstream)
        front = rpc.Channel(front_sock, lambda frames: back.send(frames))
        back = rpc.Channel(back_sock, lambda frames: front.send(frames))
        ready.send(endpoint)
        await asyncio.Event().wait()

    uvloop.run(main())


def _front(ready: Connection, upstream: str | None) -> None:
    """HTTP in; the body through the relays (when there are any), and back as the answer."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, asyncio.Future[bytes]] = {}
        channel = None
        if upstream is not None:
            sock = rpc.make_socket(zmq.Context(), zmq.DEALER)
            sock.connect(upstream)
            channel = rpc.Channel(sock, lambda frames: waiting.pop(frames[0]).set_result(frames[1]))
        numbers = iter(range(1 << 62))

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if channel is not None:
                key = next(numbers).to_bytes(8, "little")
                waiting[key] = future = loop.create_future()
                channel.send([key, body])
                await future
            return web.Response(body=CALL, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/functions/{name}/invoke", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    uvloop.run(main())


def _start(target: Any, *args: Any) -> tuple[multiprocessing.Process, Any]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    if not ours.poll(30):
        raise RuntimeError(f"{target.__name__} did not start")
    return process, ours.recv()


def measure(hops: int, calls: int) -> dict[str, Any]:
    processes = []
    try:
        upstream = None
        for i in range(hops):  # from the far end: the echo, then the relays before it
            process, upstream = _start(_echo) if i == 0 else _start(_relay, upstream)
            processes.append(process)
        process, port = _start(_front, upstream)
        processes.append(process)
        latencies = []
        with Client(f"http://127.0.0.1:{port}") as client:
            for i in range(calls + calls // 10):  # the first tenth warms up
                t0 = time.perf_counter()
                client.invoke("noop", {})
                if i >= calls // 10:
                    latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        for process in processes:
            process.kill()
            process.join()
    latencies.sort()
    return {
        "hops": hops,
        "calls": calls,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hops", default="0,1,2,3", help="processes behind the front, listed")
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    results = [measure(int(hops), args.calls) for hops in args.hops.split(",")]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
