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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


@asynccontextmanager
async def noop_cluster(sandboxes: int, connections: int) -> AsyncIterator[aiohttp.ClientSession]:
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
                yield session
        finally:
            cluster.stop()
