"""Durable coordinators against a client driving the same steps, side by side, as JSON.

    .venv/bin/python bench/durable.py [--steps 20] [--rounds 5]

One local cluster (process driver, one worker). Each round runs, in turn:

- ``client``: a ``FunctionExecutor`` in this process doing ``steps`` sequential
  ``call_async(inc, x)`` / ``get_result()`` steps;
- ``coordinator``: the same loop as a coordinator (``TriggerflowExecutor.run``): each
  step ends the coordinator's run (WAITING), the call's end event fires the join trigger,
  and the coordinator runs again and replays its history.

Per step (medians over the rounds): the client's wall time over ``steps``; the
coordinator's from its first run starting to its last run ending, over ``steps``
(``coordinator_wall_step_ms`` adds starting it and polling for its result).
``resume_ms``: from a step's call ending (its ``finishedAt``) to the coordinator's next
run starting (``startedAt``), over every step of every round. ``coordinator_parts_ms``
splits a coordinator's step (medians): its run in the sandbox, from the run's end to
the step's call starting (the suspension stored, the call made and placed), the call,
and the resume. ``ratio``: the median over the rounds of each round's coordinator step
over its client step. The target (issue 14) is a coordinator step at most 2x a client
step of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import LocalCluster
from fum_client import FunctionExecutor, TriggerflowExecutor


def inc(x: int) -> int:
    return x + 1


def chain(args: dict[str, Any]) -> int:
    fexec = FunctionExecutor(**args)
    x = 0
    for _ in range(args.get("steps", 20)):
        x = fexec.get_result(fexec.call_async(inc, x))
    return x


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def client_chain(fexec: FunctionExecutor, steps: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for _ in range(steps):
        x = fexec.get_result(fexec.call_async(inc, x))
    assert x == steps
    return time.perf_counter() - t0


PARTS = ("run", "suspend_to_call", "call", "resume")


def coordinator_chain(
    tf: TriggerflowExecutor, steps: int
) -> tuple[float, float, dict[str, list[float]]]:
    t0 = time.perf_counter()
    execution = tf.run(chain, {"steps": steps})
    assert execution.result(timeout=300, poll=0.005) == steps
    wall = time.perf_counter() - t0
    x = execution.history()
    runs = x["runCalls"]
    span = _ts(runs[-1]["finishedAt"]) - _ts(runs[0]["startedAt"])
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    for step in x["steps"]:
        run, call, following = runs[step["seq"]], step["calls"][0], runs[step["seq"] + 1]
        marks = [
            _ts(run["startedAt"]),
            _ts(run["finishedAt"]),
            _ts(call["startedAt"]),
            _ts(call["finishedAt"]),
            _ts(following["startedAt"]),
        ]
        for part, start, end in zip(PARTS, marks, marks[1:], strict=False):
            parts[part].append(end - start)
    return span, wall, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(Path(folder), port=0, capacity=4).start()
        try:
            with FunctionExecutor(cluster.url) as fexec, TriggerflowExecutor(cluster.url) as tf:
                client_chain(fexec, 5)  # warm: the built-in function, its sandboxes
                coordinator_chain(tf, 3)
                client: list[float] = []
                coordinator: list[float] = []
                walls: list[float] = []
                parts: dict[str, list[float]] = {part: [] for part in PARTS}
                for _ in range(options.rounds):
                    client.append(client_chain(fexec, options.steps) / options.steps)
                    span, wall, measured = coordinator_chain(tf, options.steps)
                    coordinator.append(span / options.steps)
                    walls.append(wall / options.steps)
                    for part, values in measured.items():
                        parts[part] += values
        finally:
            cluster.stop()
    resumes = parts["resume"]
    client_ms = statistics.median(client) * 1000
    coordinator_ms = statistics.median(coordinator) * 1000
    print(
        json.dumps(
            {
                "steps": options.steps,
                "rounds": options.rounds,
                "client_step_ms": round(client_ms, 2),
                "coordinator_step_ms": round(coordinator_ms, 2),
                "coordinator_wall_step_ms": round(statistics.median(walls) * 1000, 2),
                # each round's coordinator step over its client step (the two measured
                # back to back), the median: the host's load moves both alike
                "ratio": round(
                    statistics.median(c / k for c, k in zip(coordinator, client, strict=True)), 2
                ),
                "ratio_of_medians": round(coordinator_ms / client_ms, 2),
                "resume_ms": {
                    "p50": round(statistics.median(resumes) * 1000, 2),
                    "p90": round(sorted(resumes)[int(0.9 * len(resumes))] * 1000, 2),
                    "max": round(max(resumes) * 1000, 2),
                },
                "coordinator_parts_ms": {
                    part: round(statistics.median(values) * 1000, 2)
                    for part, values in parts.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
