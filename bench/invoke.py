"""Invoke latency and throughput of a local cluster, printed as JSON.

    .venv/bin/python bench/invoke.py [--calls 2000] [--async-calls 10000] [--concurrency 64]

Starts a local cluster (process driver, function preload), deploys a no-op handler and
measures: sequential blocking invokes over one keep-alive connection (p50/p99; the
SDK's client), then non-blocking invokes sent by
``concurrency`` clients, timed until every one is finished, then the same number
submitted in batches of 1,000 (POST /v1/calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
from common import (  # bench/common.py, beside this script
    JSON,
    cpu_by_role,
    cpu_per_call,
    noop_cluster,
    percentile,
)

from fum_client import Client
from tests.support import Api


def _sequential(url: str, calls: int) -> list[float]:
    """Blocking invokes one after the other over one kept-alive connection, through the
    SDK's ``Client`` (a lean HTTP/1.1 client): an aiohttp client costs the load generator
    about 0.3 - 0.8 ms a call on these two cores, and ``http.client`` about 0.12 ms more
    than the SDK's, which would be counted as the cluster's."""
    latencies = []
    with Client(url) as client:
        for _ in range(calls):
            t0 = time.perf_counter()
            call = client.invoke("noop", {})
            latencies.append((time.perf_counter() - t0) * 1000)
            assert call.status == "DONE", call
    return latencies


async def sequential(url: str, calls: int) -> dict[str, Any]:
    latencies = await asyncio.to_thread(_sequential, url, calls)
    return {
        "calls": calls,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
    }


async def throughput(
    session: aiohttp.ClientSession, calls: int, concurrency: int
) -> dict[str, Any]:
    todo = iter(range(calls))
    errors = 0

    async def client() -> None:
        nonlocal errors
        for _ in todo:
            url = "/v1/functions/noop/invoke?blocking=false"
            async with session.post(url, data=b"{}", headers=JSON) as r:
                await r.read()
                errors += r.status != 202

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    accepted = time.perf_counter() - t0
    api = Api(session)
    while True:  # finished when nothing of noop is PENDING or RUNNING any more
        left = 0
        for status in ("PENDING", "RUNNING"):
            _, body = await api.request(
                "GET", "/v1/calls", params={"function": "noop", "status": status, "limit": 1}
            )
            left += len(body["items"])
        if not left:
            break
        await asyncio.sleep(0.01)
    finished = time.perf_counter() - t0
    return {
        "calls": calls,
        "concurrency": concurrency,
        "errors": errors,
        "accept_per_s": round(calls / accepted),
        "finished_per_s": round(calls / finished),
        "seconds": round(finished, 2),
    }


async def batched(session: aiohttp.ClientSession, calls: int) -> dict[str, Any]:
    """The same calls submitted 1,000 to a request (POST /v1/calls), timed until all end."""
    api = Api(session)
    t0 = time.perf_counter()
    nums: list[int] = []
    for first in range(0, calls, 1000):
        batch = [{"function": "noop"}] * min(1000, calls - first)
        status, body = await api.request("POST", "/v1/calls", json={"calls": batch})
        assert status == 202, body
        nums += body["callNums"]
    submitted = time.perf_counter() - t0
    _, body = await api.request("POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 300})
    assert body["pending"] == []
    finished = time.perf_counter() - t0
    return {
        "calls": calls,
        "accept_per_s": round(calls / submitted),
        "finished_per_s": round(calls / finished),
        "seconds": round(finished, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Each phase with the CPU its calls cost, by process role (µs a call)."""
    async with noop_cluster(args.sandboxes, args.concurrency) as (session, cluster):
        phases = {
            "blocking_sequential": lambda: sequential(cluster.url, args.calls),
            "non_blocking": lambda: throughput(session, args.async_calls, args.concurrency),
            "non_blocking_batched": lambda: batched(session, args.async_calls),
        }
        report: dict[str, object] = {"sandboxes": args.sandboxes}
        for name, phase in phases.items():
            before = cpu_by_role(cluster)
            figures = await phase()
            calls = int(figures["calls"])
            figures["cpu_us_per_call"] = cpu_per_call(before, cpu_by_role(cluster), calls)
            report[name] = figures
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--async-calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sandboxes", type=int, default=2)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
