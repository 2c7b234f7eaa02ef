"""Sandbox start costs per preload policy, printed as JSON.

    .venv/bin/python bench/starts.py [--driver docker|process] [--rounds 5]

For each policy, a fresh local cluster and ``rounds`` new functions (a no-op handler, a
runtime with no dependencies command): ``none`` measures a cold start (sandbox started on
the call), ``runtime`` the specialisation of a generic sandbox (code in, run command up),
``function`` a warm first call. Each figure is the call's ``initMs`` (set-up on the call's
path, measured by the miniworker) and the client's latency for the whole blocking invoke.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import LocalCluster
from tests.support import Api, targz

NOOP = "def handle(params):\n    return None\n"
RUNTIME = {"image": "pythonruntime", "dependencies": "", "run": "python3 -m fum main:handle"}
EXPECTED = {"none": "cold", "runtime": "specialized", "function": "warm"}


async def measure(policy: str, driver: str, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(Path(folder), port=0, preload=policy, driver=driver)
        cluster.start()
        try:
            async with aiohttp.ClientSession(cluster.url) as session:
                api = Api(session)
                await api.runtime("bench", RUNTIME)
                init, total, after = [], [], ""
                for i in range(rounds):
                    name = f"noop{i}"
                    if policy == "runtime":  # a heartbeat newer than the last call says so
                        await api.wait_nodes(
                            lambda n, t=after: (
                                n[0]["heardAt"] > t and n[0]["generic"].get("bench", 0) >= 1
                            )
                        )
                    status, _ = await api.deploy(name, "bench", targz({"main.py": NOOP}))
                    assert status == 201
                    if policy == "function":
                        await api.wait_nodes(lambda n, f=name: n[0]["idle"].get(f, 0) >= 1)
                    t0 = time.perf_counter()
                    _, call = await api.invoke(name)
                    total.append((time.perf_counter() - t0) * 1000)
                    assert call["status"] == "DONE" and call["start"] == EXPECTED[policy], call
                    init.append(call["initMs"])
                    after = call["finishedAt"]
                return {
                    "start": EXPECTED[policy],
                    "init_ms_median": round(statistics.median(init), 1),
                    "invoke_ms_median": round(statistics.median(total), 1),
                    "invoke_ms_max": round(max(total), 1),
                }
        finally:
            cluster.stop()


async def run(args: argparse.Namespace) -> dict[str, object]:
    return {
        "driver": args.driver,
        "rounds": args.rounds,
        **{
            policy: await measure(policy, args.driver, args.rounds)
            for policy in ("none", "runtime", "function")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="docker", choices=["docker", "process"])
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
