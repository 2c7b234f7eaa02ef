"""The keeper beside a real ZooKeeper, through kazoo, in one run.

    .venv/bin/python bench/keeper.py [--ops 2000] [--ops-each 300] [--clients 1,16]

Starts a keeper (``keeper_sync=normal``, its default), a keeper with ``keeper_sync=full``
(an fsync per group commit, as ZooKeeper's default forceSync=yes does per log flush) and
Debian's ZooKeeper, each on a free port with a fresh data folder. Each client is a
process of its own with one kazoo client (kazoo's threads would share one GIL
otherwise); with N clients they start together and each does its share, in ``--rounds``
turns that the servers take one after the other. For create,
getData and setData (32-byte values): latency p50/p99 in ms and throughput in ops/s;
then the keeper's ratio to ZooKeeper (latency: ZooKeeper's over the keeper's, so above 1
means the keeper is faster; throughput: the keeper's over ZooKeeper's). Taking turns
shares a slow moment of the machine between the servers. JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import percentile  # bench/common.py, beside this script (puts the repo on the path)

from tests.keeper import Server, start_server

VALUE = b"v" * 32
OPS = ("create", "get", "set")


def operation(client: Any, op: str, node: str) -> Any:
    """The op as a function of its index: create a child of ``node``, or get/set it."""
    if op == "create":
        return lambda i: client.create(f"{node}/n{i}", VALUE)
    if op == "get":
        return lambda i: client.get(node)
    return lambda i: client.set(node, VALUE)


def client_loop(conn: Connection) -> None:
    """A client process: one kazoo client per server, ops on command."""
    from kazoo.client import KazooClient

    clients: dict[str, KazooClient] = {}
    while True:
        order = conn.recv()
        if order[0] == "stop":
            break
        if order[0] == "connect":
            _, name, hosts = order
            clients[name] = KazooClient(hosts, timeout=10)
            clients[name].start(timeout=30)
            conn.send("ok")
            continue
        _, name, op, count, base = order
        client = clients[name]
        mine = f"{base}/{uuid.uuid4().hex[:8]}"
        client.create(mine, VALUE)
        call = operation(client, op, mine)
        for i in range(20):  # warm: connection, caches, JIT on the Java side
            call(-1 - i)
        conn.send("ready")
        conn.recv()  # go
        latencies = []
        start = time.monotonic()
        for i in range(count):
            t0 = time.perf_counter()
            call(i)
            latencies.append((time.perf_counter() - t0) * 1000)
        conn.send((start, time.monotonic(), latencies))
    for client in clients.values():
        client.stop()
        client.close()


class Clients:
    """``n`` client processes, driven together."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_loop, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def connect(self, name: str, hosts: str) -> None:
        for conn in self.conns:
            conn.send(("connect", name, hosts))
        for conn in self.conns:
            assert conn.recv() == "ok"

    def run(self, name: str, op: str, n: int, each: int, base: str) -> tuple[list[float], float]:
        """``n`` clients doing ``each`` ops at once: every latency (ms), the wall time (s)."""
        used = self.conns[:n]
        for conn in used:
            conn.send(("run", name, op, each, base))
        for conn in used:
            assert conn.recv() == "ready"
        for conn in used:
            conn.send("go")
        results = [conn.recv() for conn in used]
        latencies = [ms for _, _, values in results for ms in values]
        wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
        return latencies, wall

    def stop(self) -> None:
        for conn in self.conns:
            conn.send(("stop",))
        for proc in self.procs:
            proc.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="ops of the lone client")
    parser.add_argument("--ops-each", type=int, default=300, help="ops of each of N clients")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--rounds", type=int, default=5, help="turns each server takes")
    parser.add_argument("--no-full", action="store_true", help="skip the keeper_sync=full run")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="fum-bench-keeper-"))
    servers: dict[str, Server] = {
        "keeper": start_server("keeper", folder / "keeper", log_level="warning"),
        "zookeeper": start_server("zookeeper", folder / "zookeeper"),
    }
    if not args.no_full:
        servers["keeper-full"] = start_server(
            "keeper", folder / "keeper-full", log_level="warning", keeper_sync="full"
        )
    clients = Clients(max(counts))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, server in servers.items():
            clients.connect(name, server.hosts)
        base = f"/bench-{uuid.uuid4().hex[:8]}"
        from kazoo.client import KazooClient

        for server in servers.values():
            setup = KazooClient(server.hosts)
            setup.start(timeout=30)
            setup.create(base)
            setup.stop()
            setup.close()
        for op in OPS:
            for n in counts:
                each = (args.ops if n == 1 else args.ops_each) // args.rounds
                key = f"{op} x{n}"
                got: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in servers}
                for _ in range(args.rounds):  # the servers take turns, round after round
                    for name in servers:
                        latencies, wall = clients.run(name, op, n, each, base)
                        got[name] = (got[name][0] + latencies, got[name][1] + wall)
                for name, (latencies, wall) in got.items():
                    results.setdefault(key, {})[name] = {
                        "p50_ms": percentile(latencies, 50),
                        "p99_ms": percentile(latencies, 99),
                        "ops_per_s": round(len(latencies) / wall),
                    }
                    print(key, name, results[key][name], flush=True)
    finally:
        clients.stop()
        for server in servers.values():
            server.stop()
    print()
    print(f"{'':12} {'server':12} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8}")
    for key, by_server in results.items():
        for name, figures in by_server.items():
            print(
                f"{key:12} {name:12} {figures['p50_ms']:8.3f} {figures['p99_ms']:8.3f} "
                f"{figures['ops_per_s']:8d}"
            )
        keeper, zk = by_server["keeper"], by_server["zookeeper"]
        by_server["ratio"] = {
            "p50": round(zk["p50_ms"] / keeper["p50_ms"], 2),
            "p99": round(zk["p99_ms"] / keeper["p99_ms"], 2),
            "throughput": round(keeper["ops_per_s"] / zk["ops_per_s"], 2),
        }
        print(f"{key:12} {'ratio':12} {by_server['ratio']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
