"""Workflow sessions beside the same work driven from a client, printed as JSON.

    .venv/bin/python bench/workflows.py [--steps 10] [--items 1000] [--rounds 3]

Starts a local cluster (process driver, ``function`` preload, room for every function's
sandboxes: Work keeps ``--work-sandboxes`` warm, all up before the warm-up), deploys two
unum apps and measures, in rounds that take turns so that both sides see the same machine:

- a chain: a self-loop of ``steps`` steps (``$0 < $size-1``, ``$0=$0+1``) as one
  session, per step; beside it the same function called ``steps`` times in a row from
  a client through ``FunctionExecutor`` (each call's result the next one's input), per
  step, and a warm blocking invoke of it through the SDK's ``Client`` (p50);
- a map with a fan-in: Split returns ``items`` numbers, Work maps over them, Sum adds
  their outputs, as one session (wall time); beside it the same functions from a client:
  Split called, ``FunctionExecutor.map`` of Work over its result and ``get_result``, then
  Sum called.

Ratios: a chained step against a warm blocking invoke (target at most 1.5) and against a
client-driven step; the map session against the client-driven map (target at most 1.3).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import LocalCluster
from fum_client import Client, FunctionExecutor
from tests.workflows import app_archive

IDENTITY = "def lambda_handler(event, context):\n    return event\n"


def chain_app() -> bytes:
    """One step that loops on itself: the session's Fan-out Size says how many times."""
    return app_archive(
        {
            "Step": (
                {
                    "Start": True,
                    "Next": {"Name": "Step", "InputType": "Scalar", "Conditional": "$0 < $size-1"},
                    "Next Payload Modifiers": ["$0=$0+1"],
                },
                "def lambda_handler(event, context):\n    return event + 1\n",
            )
        }
    )


def map_app() -> bytes:
    return app_archive(
        {
            "Split": (
                {"Start": True, "Next": {"Name": "Work", "InputType": "Map"}},
                "def lambda_handler(event, context):\n    return list(range(event))\n",
            ),
            "Work": (
                {
                    "Next": {
                        "Name": "Sum",
                        "InputType": {"Fan-in": {"Values": ["Work-unumIndex-*"]}},
                    },
                    "Next Payload Modifiers": ["Pop"],
                },
                "def lambda_handler(event, context):\n    return event + 1\n",
            ),
            "Sum": ({}, "def lambda_handler(event, context):\n    return sum(event)\n"),
        }
    )


def session_chain(api: Client, steps: int) -> float:
    """Seconds of one chain session of ``steps`` steps."""
    event = {"Data": {"Value": 0}, "Fan-out": {"Type": "Map", "Index": 0, "Size": steps}}
    t0 = time.perf_counter()
    session = api.start_session("chain", event, timeout=120)
    elapsed = time.perf_counter() - t0
    assert session.status == "DONE" and session.result == steps, session
    return elapsed


def client_chain(fexec: FunctionExecutor, steps: int) -> float:
    """Seconds of the same chain driven from the client, one call after the other."""
    t0 = time.perf_counter()
    value = 0
    for _ in range(steps):
        value = fexec.call_async("chain.Step", value).result()
    elapsed = time.perf_counter() - t0
    assert value == steps, value
    return elapsed


def blocking_invokes(api: Client, calls: int) -> list[float]:
    latencies = []
    for i in range(calls):
        t0 = time.perf_counter()
        call = api.invoke("chain.Step", i)
        latencies.append(time.perf_counter() - t0)
        assert call.status == "DONE" and call.result == i + 1, call
    return latencies


def session_map(api: Client, items: int) -> float:
    t0 = time.perf_counter()
    session = api.start_session("mapped", items, timeout=300)
    elapsed = time.perf_counter() - t0
    assert session.status == "DONE" and session.result == sum(range(1, items + 1)), session
    return elapsed


def client_map(api: Client, fexec: FunctionExecutor, items: int) -> float:
    t0 = time.perf_counter()
    numbers = api.run("mapped.Split", items).result
    outputs = fexec.get_result(fexec.map("mapped.Work", numbers))
    total = api.run("mapped.Sum", outputs).result
    elapsed = time.perf_counter() - t0
    assert total == sum(range(1, items + 1)), total
    return elapsed


def measure(url: str, steps: int, items: int, rounds: int, work_sandboxes: int) -> dict[str, Any]:
    with Client(url, timeout=300) as api, FunctionExecutor(api_url=url) as fexec:
        api.deploy_app("chain", chain_app())
        api.deploy_app("mapped", map_app())
        # Room for every function's sandboxes at once: none is evicted (and started cold
        # again) for another's, on either side. Work's are all kept warm from the start:
        # one started on demand holds the call it was started for until it is up, which
        # on a busy host took seconds (a whole measured round's time, once).
        api.update_function("mapped.Work", max_containers=work_sandboxes, min_warm=work_sandboxes)
        deadline = time.monotonic() + 120
        while sum(n.idle.get("mapped.Work", 0) for n in api.list_nodes()) < work_sandboxes:
            assert time.monotonic() < deadline, api.list_nodes()
            time.sleep(0.2)
        # warm-up: every function has run, on both paths
        session_chain(api, steps)
        client_chain(fexec, steps)
        session_map(api, items)
        client_map(api, fexec, items)
        blocking_invokes(api, 200)
        figures: dict[str, list[float]] = {
            "session_step_ms": [],
            "client_step_ms": [],
            "invoke_p50_ms": [],
            "session_map_s": [],
            "client_map_s": [],
        }
        for _ in range(rounds):
            figures["invoke_p50_ms"].append(statistics.median(blocking_invokes(api, 200)) * 1e3)
            figures["session_step_ms"].append(
                statistics.median(session_chain(api, steps) for _ in range(5)) / steps * 1e3
            )
            figures["client_step_ms"].append(
                statistics.median(client_chain(fexec, steps) for _ in range(5)) / steps * 1e3
            )
            figures["session_map_s"].append(session_map(api, items))
            figures["client_map_s"].append(client_map(api, fexec, items))
    median = {name: round(statistics.median(values), 3) for name, values in figures.items()}
    return {
        "steps": steps,
        "items": items,
        "rounds": rounds,
        **median,
        "each_round": {name: [round(v, 3) for v in values] for name, values in figures.items()},
        "step_vs_invoke": round(median["session_step_ms"] / median["invoke_p50_ms"], 2),
        "step_vs_client_step": round(median["session_step_ms"] / median["client_step_ms"], 2),
        "map_vs_client_map": round(median["session_map_s"] / median["client_map_s"], 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-sandboxes", type=int, default=4)
    args = parser.parse_args()
    prewarm = 2  # of each of the four functions
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(
            Path(os.environ.get("BENCH_DIR") or folder),
            port=0,
            preload="function",
            capacity=3 * prewarm + args.work_sandboxes,
            env={"FUM_PREWARM": str(prewarm)},
        )
        cluster.start()
        try:
            result = await asyncio.to_thread(
                measure, cluster.url, args.steps, args.items, args.rounds, args.work_sandboxes
            )
        finally:
            cluster.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
