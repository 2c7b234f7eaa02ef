"""State at scale: an empty cluster beside one holding 1M calls and 2,000 functions.

    .venv/bin/python bench/state.py [--calls 1000000] [--functions 2000] [--rounds 3]

Two data folders are made once: ``empty`` (a runtime and the ``noop`` function) and
``full`` (the same, a million finished calls, built through the db's schema as the tests'
fixture builds them, and 2,000 more functions registered through the api one by one,
the worker's CPU per registration measured for the first and the last 250). Then, in
each round: each folder's cluster (process driver) started alone, three times taking
turns (start-up to ready); then a cluster on each folder, both running, measured with
every request sent to each in turn, which one first alternating (so both see the same
moments of the host's load): warm invoke p50/p99 (2,000 each), every listing (median
of its requests); then, one cluster at a time, the original ``GET /calls``: its time, size,
the api's peak RSS (VmHWM), and the slowest ``/healthz`` and ``/v1/calls/1`` sent
while it streams. Printed as JSON: each figure's median over the rounds, per folder,
and the ratio full / empty.
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

INVOKES = 2000  # enough that the p99 is not three samples
REQUESTS = 50  # of each listing
STARTS = 3  # of each folder's cluster, alone, taking turns
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


async def get_ms(session: aiohttp.ClientSession, path: str) -> float:
    """Milliseconds a GET of ``path`` takes to answer 200, its body read."""
    t0 = time.perf_counter()
    async with session.get(path) as response:
        assert response.status == 200, await response.text()
        await response.read()
    return (time.perf_counter() - t0) * 1000


async def invoke_ms(session: aiohttp.ClientSession, _: str) -> float:
    t0 = time.perf_counter()
    status, _ = await Api(session).invoke("noop")
    assert status == 200
    return (time.perf_counter() - t0) * 1000


async def legacy_calls(session: aiohttp.ClientSession, cluster: LocalCluster) -> dict[str, float]:
    """The original GET /calls: time, size, the api's peak RSS, /healthz meanwhile."""
    probes: list[float] = []
    reads: list[float] = []
    size = 0
    async with aiohttp.ClientSession(cluster.url) as prober:
        await get_ms(prober, "/healthz")
        t0 = time.perf_counter()
        async with session.get("/calls") as response:
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size // 4_000_000 >= len(probes):
                    probes.append(await get_ms(prober, "/healthz"))
                    reads.append(await get_ms(prober, "/v1/calls/1"))
        elapsed = time.perf_counter() - t0
    return {
        "legacy_calls_s": round(elapsed, 3),
        "legacy_calls_mb": round(size / 1e6, 1),
        "api_peak_rss_mb": peak_rss_mb(cluster.procs["api"].pid),
        "healthz_during_legacy_max_ms": round(max(probes), 3),
        "call_during_legacy_max_ms": round(max(reads), 3),
    }


LISTINGS = {
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


def in_turn(names: list[str], i: int) -> list[str]:
    """The folders in the order of turn ``i``: which goes first alternates, so neither
    is always the one measured right after the other's request."""
    return names if i % 2 == 0 else names[::-1]


def start_ups(folders: dict[str, Path]) -> dict[str, float]:
    """Seconds to ready of each folder's cluster started alone (the other stopped: a
    running cluster's idle work, its sandboxes warming up, would slow the one starting),
    taking turns; the median of ``STARTS`` each."""
    times: dict[str, list[float]] = {name: [] for name in folders}
    for i in range(STARTS):
        for name in in_turn(list(folders), i):
            t0 = time.perf_counter()
            cluster = LocalCluster(folders[name], port=0).start(timeout=120)
            times[name].append(time.perf_counter() - t0)
            cluster.stop()
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


async def measure(folders: dict[str, Path]) -> dict[str, dict[str, float]]:
    """One round: the start-ups, then a cluster on each folder, both running; every
    request goes to each in turn, so both see the same moments of the host's load."""
    figures: dict[str, dict[str, float]] = {name: {} for name in folders}
    for name, seconds in (await asyncio.to_thread(start_ups, folders)).items():
        figures[name]["start_s"] = seconds
    names = list(folders)
    clusters: dict[str, LocalCluster] = {}
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        for name, folder in folders.items():
            clusters[name] = LocalCluster(folder, port=0).start(timeout=120)
        sessions = {
            name: aiohttp.ClientSession(cluster.url, timeout=timeout)
            for name, cluster in clusters.items()
        }
        try:
            for session in sessions.values():
                for _ in range(50):  # warm-up: the sandbox, the connection
                    await invoke_ms(session, "")
            latencies: dict[str, list[float]] = {name: [] for name in folders}
            for i in range(INVOKES):
                for name in in_turn(names, i):
                    latencies[name].append(await invoke_ms(sessions[name], ""))
            for name, times in latencies.items():
                figures[name]["invoke_p50_ms"] = percentile(times, 50)
                figures[name]["invoke_p99_ms"] = percentile(times, 99)
            for listing, path in LISTINGS.items():
                times = {name: [] for name in folders}
                for i in range(REQUESTS):
                    for name in in_turn(names, i):
                        times[name].append(await get_ms(sessions[name], path))
                for name in folders:
                    figures[name][f"{listing}_ms"] = round(statistics.median(times[name]), 3)
            for name, session in sessions.items():  # one at a time: the other idle
                figures[name].update(await legacy_calls(session, clusters[name]))
        finally:
            for session in sessions.values():
                await session.close()
    finally:
        for cluster in clusters.values():
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
            for name, figures in (await measure({"empty": empty, "full": full})).items():
                runs[name].append(figures)
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
