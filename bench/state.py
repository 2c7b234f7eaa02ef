"""State at scale: an empty cluster beside one holding 1M calls and 2,000 functions.

    .venv/bin/python bench/state.py [--calls 1000000] [--functions 2000] [--rounds 3]

Two data folders are made once: ``empty`` (a runtime and the ``noop`` function) and
``full`` (the same, a million finished calls, built through the db's schema as the tests'
fixture builds them, and 2,000 more functions registered through the api one by one,
the worker's CPU per registration measured for the first and the last 250). Then, in
rounds that alternate the two folders, a local cluster (process driver) is started on
each and measured: start-up to ready, warm invoke p50/p99, every listing (median of
its requests), ``/healthz`` while the original ``GET /calls`` streams, and that route's
time, size and the api's peak RSS (VmHWM). Printed as JSON: each figure's median over
the rounds, per folder, and the ratio full / empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NOOP, RUNTIME, percentile
from fum_cli.local import LocalCluster
from tests.support import Api, build_calls_file, targz

INVOKES = 300
REQUESTS = 50  # of each listing
BLOCK = 250  # registrations whose worker CPU is summed together


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


async def prepare(folder: Path, calls: int, functions: int) -> dict[str, float]:
    """Make a data folder: the calls file, then the functions through the api."""
    folder.mkdir(parents=True)
    if calls:
        await asyncio.to_thread(build_calls_file, folder / "fum.sqlite3", calls)  # its own loop
    cluster = LocalCluster(folder, port=0).start(timeout=120)
    per_registration: list[float] = []
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime("bench", RUNTIME)
            package = targz({"main.py": NOOP})
            status, _ = await api.deploy("noop", "bench", package)
            assert status == 201
            worker = cluster.procs["worker-0"].pid
            for start in range(0, functions, BLOCK):
                before = cpu_seconds(worker)
                for i in range(start, min(start + BLOCK, functions)):
                    status, body = await api.deploy(f"fn{i:05d}", "bench", package)
                    assert status == 201, body
                await asyncio.sleep(0.5)  # the last pushes reach the worker
                per_registration.append((cpu_seconds(worker) - before) / BLOCK * 1000)
    finally:
        cluster.stop()
    if not per_registration:
        return {}
    return {
        "worker_ms_per_registration_first": round(per_registration[0], 3),
        "worker_ms_per_registration_last": round(per_registration[-1], 3),
    }


async def timed(session: aiohttp.ClientSession, path: str, count: int) -> float:
    """Median milliseconds of ``count`` GETs of ``path``."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        async with session.get(path) as response:
            assert response.status == 200, await response.text()
            await response.read()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


async def legacy_calls(session: aiohttp.ClientSession, cluster: LocalCluster) -> dict[str, float]:
    """The original GET /calls: time, size, the api's peak RSS, /healthz meanwhile."""
    probes: list[float] = []
    reads: list[float] = []
    size = 0
    async with aiohttp.ClientSession(cluster.url) as prober:
        await timed(prober, "/healthz", 1)
        t0 = time.perf_counter()
        async with session.get("/calls") as response:
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size // 4_000_000 >= len(probes):
                    probes.append(await timed(prober, "/healthz", 1))
                    reads.append(await timed(prober, "/v1/calls/1", 1))
        elapsed = time.perf_counter() - t0
    return {
        "legacy_calls_s": round(elapsed, 3),
        "legacy_calls_mb": round(size / 1e6, 1),
        "api_peak_rss_mb": peak_rss_mb(cluster.procs["api"].pid),
        "healthz_during_legacy_max_ms": max(probes),
        "call_during_legacy_max_ms": max(reads),
    }


async def measure(folder: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    cluster = LocalCluster(folder, port=0).start(timeout=120)
    figures: dict[str, float] = {"start_s": round(time.perf_counter() - t0, 3)}
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(cluster.url, timeout=timeout) as session:
            api = Api(session)
            for _ in range(50):  # warm-up: the sandbox, the connection
                await api.invoke("noop")
            latencies = []
            for _ in range(INVOKES):
                t1 = time.perf_counter()
                status, _ = await api.invoke("noop")
                latencies.append((time.perf_counter() - t1) * 1000)
                assert status == 200
            figures["invoke_p50_ms"] = percentile(latencies, 50)
            figures["invoke_p99_ms"] = percentile(latencies, 99)
            listings = {
                "calls": "/v1/calls",
                "calls_function": "/v1/calls?function=noop",
                "calls_status": "/v1/calls?status=DONE",
                "calls_rare_function_status": "/v1/calls?function=rare&status=DONE",
                "call": "/v1/calls/1",
                "legacy_call": "/call/1",
                # pages of one size on both: the first function, and the one after noop
                "functions_first": "/v1/functions?limit=1",
                "functions_after": "/v1/functions?after=noop&limit=1",
                "runtimes": "/v1/runtimes",
                "healthz": "/healthz",
            }
            for name, path in listings.items():
                figures[f"{name}_ms"] = await timed(session, path, REQUESTS)
            figures.update(await legacy_calls(session, cluster))
    finally:
        cluster.stop()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--functions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        await prepare(empty, 0, 0)
        setup = await prepare(full, args.calls, args.functions)
        runs: dict[str, list[dict[str, float]]] = {"empty": [], "full": []}
        for _ in range(args.rounds):
            for name, folder in (("empty", empty), ("full", full)):
                runs[name].append(await measure(folder))
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in runs.items()
    }
    report: dict[str, Any] = {
        "calls": args.calls,
        "functions": args.functions,
        "rounds": args.rounds,
        **setup,
        "empty": medians["empty"],
        "full": medians["full"],
        "ratio": {
            key: round(medians["full"][key] / medians["empty"][key], 2)
            for key in medians["empty"]
            if medians["empty"][key]
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
