"""What the benchmarks share: a local cluster with a warm no-op function deployed."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import LocalCluster
from tests.support import Api, targz

NOOP = "def handle(params):\n    return None\n"
RUNTIME = {"image": "pythonruntime", "dependencies": "", "run": "python3 -m fum main:handle"}
# invokes send JSON as JSON: the api answers 415 to a body of another (or no) type
JSON = {"Content-Type": "application/json"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for word in cmdline:
        if word.startswith(b"services."):
            return word.decode().removeprefix("services.")
    return "function"


def cpu_by_role(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the cluster's processes, by role: api,
    db, worker, miniworker and function (the sandboxes' processes)."""
    tree, ticks = _children(), os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    todo = [p.pid for p in cluster.procs.values()]
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            role = _role(pid)
        except OSError:
            continue
        used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def cpu_per_call(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, int]:
    """Microseconds of CPU per call, by role, between two ``cpu_by_role`` readings."""
    per_call = {role: round((after[role] - before.get(role, 0.0)) / calls * 1e6) for role in after}
    return {**per_call, "total": sum(per_call.values())}


@asynccontextmanager
async def noop_cluster(
    sandboxes: int, connections: int
) -> AsyncIterator[tuple[aiohttp.ClientSession, LocalCluster]]:
    """A cluster (process driver, ``function`` preload) with ``noop`` warm in ``sandboxes``
    sandboxes, and an HTTP session to it; BENCH_DIR keeps the cluster's folder and logs."""
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(
            Path(os.environ.get("BENCH_DIR") or folder),
            port=0,
            preload="function",
            capacity=sandboxes,
            env={"FUM_PREWARM": str(sandboxes)},
        )
        cluster.start()
        try:
            connector = aiohttp.TCPConnector(limit=connections)
            async with aiohttp.ClientSession(cluster.url, connector=connector) as session:
                api = Api(session)
                await api.runtime("bench", RUNTIME)
                status, _ = await api.deploy("noop", "bench", targz({"main.py": NOOP}))
                assert status in (200, 201)
                await api.wait_nodes(lambda n: n[0]["idle"].get("noop", 0) >= sandboxes)
                for _ in range(200):  # warm-up
                    await api.invoke("noop")
                yield session, cluster
        finally:
            cluster.stop()
