"""Two checkouts side by side: sequential warm blocking invokes, alternated call by call.

    .venv/bin/python bench/ab.py BEFORE AFTER [--calls 5000]

BEFORE and AFTER are checkouts of fum (``git worktree add /tmp/before main``, or
``git archive main | tar -x -C /tmp/before``). Each gets the cluster of
``bench/invoke.py`` (``bench/common.py``: process driver, a warm no-op handler), started
from its own code; then one client sends the calls one after the other over a kept-alive
connection to each, the two in a random order each round, so that the host's other work
falls on both alike. Prints each one's p50/p99/mean and AFTER's p50 over BEFORE's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import percentile  # bench/common.py, beside this script

from fum_client import Client

# Run in each checkout, from its root: its own cluster, until stdin closes.
SERVE = """
import asyncio, sys
sys.path.insert(0, "bench")
from common import noop_cluster

async def main():
    async with noop_cluster(2, 1) as (_, cluster):
        print(cluster.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def start(checkout: Path) -> tuple[subprocess.Popen[str], str]:
    # The checkout's code first on sys.path, for the services too: they start with
    # ``python -P``, which leaves the working folder out (services/common/proc.py).
    path = [str(checkout), str(checkout / "libs" / "fum"), os.environ.get("PYTHONPATH", "")]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"{checkout}: the cluster did not start")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    started = {name: start(path) for name, path in checkouts.items()}
    latencies: dict[str, list[float]] = {name: [] for name in started}
    try:
        with contextlib.ExitStack() as stack:
            clients = {name: stack.enter_context(Client(url)) for name, (_, url) in started.items()}
            order = list(clients)
            for _ in range(args.calls):
                random.shuffle(order)
                for name in order:
                    t0 = time.perf_counter()
                    call = clients[name].invoke("noop", {})
                    latencies[name].append((time.perf_counter() - t0) * 1000)
                    assert call.status == "DONE", call
    finally:
        for proc, _ in started.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(60)
    report: dict[str, object] = {
        name: {
            "checkout": str(checkouts[name]),
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": percentile(values, 99),
            "mean_ms": round(statistics.fmean(values), 3),
        }
        for name, values in latencies.items()
    }
    p50 = {name: statistics.median(values) for name, values in latencies.items()}
    report["p50_after_over_before"] = round(p50["after"] / p50["before"], 3)
    report["calls_each"] = args.calls
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
