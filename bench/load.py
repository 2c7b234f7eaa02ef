"""A sustained load on a local cluster: latency percentiles, throughput and errors, as JSON.

    .venv/bin/python bench/load.py [--clients 16] [--rate 500] [--seconds 20] [--sandboxes 4]

``clients`` connections send blocking invokes of a warm no-op function at ``rate`` calls
per second in all (open loop: a call is sent on schedule whether or not the previous one
has answered, so a slow cluster shows as latency, not as a lower offered rate). Latency
is measured from each call's scheduled time, which counts the time a call waited to be sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from common import JSON, noop_cluster, percentile  # bench/common.py, beside this script


async def load(session: aiohttp.ClientSession, args: argparse.Namespace) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    interval = args.clients / args.rate  # each client's gap between calls
    start = time.perf_counter() + 0.1
    end = start + args.seconds

    async def client(k: int) -> None:
        due = start + k * interval / args.clients
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                url = "/v1/functions/noop/invoke"
                async with session.post(url, data=b"{}", headers=JSON) as response:
                    body = await response.read()
                if response.status == 200 and b'"DONE"' in body:
                    latencies.append((time.perf_counter() - due) * 1000)
                else:
                    key = f"http {response.status}"
                    errors[key] = errors.get(key, 0) + 1
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            due += interval

    await asyncio.gather(*(client(k) for k in range(args.clients)))
    elapsed = time.perf_counter() - start
    return {
        "clients": args.clients,
        "offered_per_s": args.rate,
        "seconds": args.seconds,
        "done": len(latencies),
        "done_per_s": round(len(latencies) / elapsed),
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": round(max(latencies), 3),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with noop_cluster(args.sandboxes, args.clients) as (session, _):
        return {"sandboxes": args.sandboxes, **await load(session, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--sandboxes", type=int, default=4)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
