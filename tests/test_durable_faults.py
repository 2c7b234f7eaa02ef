"""kill -9 under a durable execution: the worker running the coordinator, then one
running its calls (two workers, as ``fum up --workers 2``)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fum_cli.local import LocalCluster
from fum_client import TriggerflowExecutor

from . import durable_coordinators as co
from .conftest import start_cluster
from .test_durable import calls_named


@pytest.fixture
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory, workers=2, policy="round-robin")
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def test_the_coordinators_worker_killed(two_workers: LocalCluster) -> None:
    with TriggerflowExecutor(two_workers.url) as tf:
        execution = tf.run(co.chain_then_pause, {"steps": 4, "pause": 4})
        client = tf.client

        def last_run_running() -> Any:
            x = execution.history()
            call = client.get_call(x["callNum"])
            done = len(x["steps"]) == 4 and all(s["status"] == "DONE" for s in x["steps"])
            return call if done and call.status == "RUNNING" and call.node_id is not None else None

        run = wait_for(last_run_running)
        two_workers.stop_process(f"worker-{run.node_id}", signal.SIGKILL)
        assert execution.result(timeout=120) == 4
        x = execution.history()
        final = client.get_call(x["callNum"])
        assert final.call_num == run.call_num and final.attempts >= 2  # the run ran again
        assert final.node_id != run.node_id
        # each step's call made and run once
        assert len(calls_named(client, x["function"], "inc")) == 4
        assert all(s["calls"][0]["attempts"] == 1 for s in x["steps"])


def test_a_calls_worker_killed(two_workers: LocalCluster) -> None:
    with TriggerflowExecutor(two_workers.url) as tf:
        execution = tf.run(co.napping_map, {"n": 6})
        client = tf.client

        def a_step_running() -> Any:
            steps = execution.history()["steps"]
            if not steps:
                return None
            calls = [client.get_call(c["callNum"]) for c in steps[0]["calls"]]
            return next((c for c in calls if c.status == "RUNNING" and c.node_id is not None), None)

        victim = wait_for(a_step_running)
        two_workers.stop_process(f"worker-{victim.node_id}", signal.SIGKILL)
        assert execution.result(timeout=120) == list(range(1, 7))
        x = execution.history()
        (step,) = x["steps"]
        assert len(step["calls"]) == 6  # one call per item, whatever ran again
        assert len(calls_named(client, x["function"], "nap")) == 6
        again = client.get_call(victim.call_num)
        assert again.status == "DONE" and again.attempts >= 2
        assert again.node_id != victim.node_id


def test_the_worker_of_a_lone_step_killed(two_workers: LocalCluster) -> None:
    """A run that waits for one call: its worker runs the call at once and writes the
    run's end with the call's RUNNING (docs/DURABLE.md). Killed while the call runs, the
    call runs again on the other worker, and the execution goes on from its result."""
    with TriggerflowExecutor(two_workers.url) as tf:
        for _ in range(4):  # both workers set call numbers aside (a first run does)
            assert tf.run(co.chain, {"steps": 2}).result(timeout=60) == 2
        execution = tf.run(co.one_nap)
        client = tf.client

        def the_step_running() -> Any:
            x = execution.history()
            if not x["steps"] or x["status"] != "WAITING":
                return None
            call = client.get_call(x["steps"][0]["calls"][0]["callNum"])
            return call if call.status == "RUNNING" and call.node_id is not None else None

        victim = wait_for(the_step_running)
        (run,) = execution.history()["runCalls"]
        assert run["status"] == "WAITING"
        two_workers.stop_process(f"worker-{victim.node_id}", signal.SIGKILL)
        assert execution.result(timeout=120) == 2
        x = execution.history()
        (step,) = x["steps"]
        assert step["calls"][0]["callNum"] == victim.call_num  # the same call, run again
        again = client.get_call(victim.call_num)
        assert again.status == "DONE" and again.attempts >= 2
        assert again.node_id != victim.node_id
        assert x["runs"] == 2
