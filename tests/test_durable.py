"""Durable coordinators on a real cluster: replay, joins, non-determinism, WAITING."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from fum_cli.local import LocalCluster
from fum_client import BadRequest, Client, ExecutionFailed, NotFound, TriggerflowExecutor

from . import durable_coordinators as co
from .conftest import start_cluster
from .support import FUNCTIONS, targz


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def tf(local: LocalCluster) -> Iterator[TriggerflowExecutor]:
    with TriggerflowExecutor(local.url) as executor:
        yield executor


def calls_named(client: Client, function: str, name: str) -> list[Any]:
    """The calls of the built-in function that ran the callable ``name``."""
    return [
        c
        for c in client.iter_calls(function=function)
        if isinstance(c.params, dict) and c.params.get("name") == name
    ]


def test_the_original_example(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.main, name="callasync")
    assert execution.result(timeout=120) == [1, list(range(1, 11))]
    x = execution.history()
    assert x["status"] == "DONE" and x["name"] == "callasync"
    assert x["runs"] >= 3
    builtin = x["function"]
    assert len(calls_named(tf.client, builtin, "my_function")) == 11
    runs = {c["callNum"]: c for c in x["runCalls"]}
    assert [c["status"] for c in x["runCalls"]] == ["WAITING"] * (x["runs"] - 1) + ["DONE"]
    # No sandbox held while waiting: each run that waited ended before the calls it
    # waited for did (they each sleep a second); the last run started after them.
    for step in x["steps"]:
        waiting_run = x["runCalls"][step["run"] - 1]
        assert all(waiting_run["finishedAt"] < c["finishedAt"] for c in step["calls"])
    assert [s["identity"] for s in x["steps"]] == [
        "callable:tests.durable_coordinators.my_function"
    ] * 2
    assert [len(s["calls"]) for s in x["steps"]] == [1, 10]
    assert len(runs) == x["runs"]


def test_a_twenty_step_chain(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.chain, {"steps": 20})
    assert execution.result(timeout=180) == 20
    x = execution.history()
    assert x["runs"] == 21 and len(x["steps"]) == 20
    assert len(calls_named(tf.client, x["function"], "inc")) >= 20
    inc_calls = [s["calls"][0]["callNum"] for s in x["steps"]]
    assert len(set(inc_calls)) == 20  # each step's call made once


def test_a_run_waits_on_steps_an_earlier_run_issued(tf: TriggerflowExecutor) -> None:
    """The first run issues three calls and waits for one; the later runs ask for the
    others, which the first issued: each waits (WAITING, a join of what is still
    running) until they have ended, and none is made twice."""
    execution = tf.run(co.waits_on_earlier_steps, {"slow": 1.0, "slower": 3.0})
    assert execution.result(timeout=120) == [0.0, 1.0, 3.0]
    x = execution.history()
    assert [s["run"] for s in x["steps"]] == [1, 1, 1]
    assert [len(s["calls"]) for s in x["steps"]] == [1, 1, 1]
    slower = x["steps"][2]["calls"][0]
    assert 3 <= x["runs"] <= 4
    runs = x["runCalls"]
    assert all(r["status"] == "WAITING" for r in runs[:-1]) and runs[-1]["status"] == "DONE"
    # The run before the last asked for the slower call, issued by the first, and ended
    # before it did; the last started after it.
    assert runs[-2]["finishedAt"] < slower["finishedAt"] < runs[-1]["startedAt"]


def db_requests(local: LocalCluster, kind: str) -> float:
    """The db's count of requests of ``kind`` answered (its metrics)."""
    port = local.metrics_ports["db"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    line = f'fum_db_requests_total{{type="{kind}"}} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


def test_a_lone_step_costs_one_db_request(local: LocalCluster, tf: TriggerflowExecutor) -> None:
    """A run that waits for one call of one new step: the worker runs the call at once and
    writes the run's end with the call's, so a step of a chain is one db request (one
    transaction: the run's end, the step, its end, and the next run), not two."""
    tf.run(co.chain, {"steps": 3}).result(timeout=60)  # the worker's numbers set aside
    before = db_requests(local, "updateCalls")
    execution = tf.run(co.chain, {"steps": 20})
    assert execution.result(timeout=180) == 20
    assert db_requests(local, "updateCalls") - before <= 24  # 21 runs, 20 steps
    x = execution.history()
    assert [c["status"] for c in x["runCalls"]] == ["WAITING"] * 20 + ["DONE"]
    assert all(s["calls"][0]["attempts"] == 1 for s in x["steps"])


def test_a_run_is_waiting_while_its_lone_step_runs(tf: TriggerflowExecutor) -> None:
    """The run's end waits for its lone step's first write (its RUNNING, a moment after
    it starts), not for its end: a long step shows the execution WAITING meanwhile."""
    tf.run(co.chain, {"steps": 2}).result(timeout=60)  # the worker's numbers set aside
    execution = tf.run(co.one_nap)
    deadline = time.monotonic() + 60
    while True:
        x = execution.history()
        calls = [c for s in x["steps"] for c in s["calls"]]
        if calls and calls[0]["status"] == "RUNNING":
            break
        assert not calls or calls[0]["status"] == "PENDING", x
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert x["status"] == "WAITING" and x["runCalls"][0]["status"] == "WAITING"
    assert execution.result(timeout=60) == 2
    step = execution.history()["steps"][0]["calls"][0]
    ran = datetime.fromisoformat(step["finishedAt"]) - datetime.fromisoformat(step["startedAt"])
    assert ran.total_seconds() > 1.5  # seen WAITING while it ran


def test_a_map_of_a_thousand_joined_by_one_trigger(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.big_map, {"n": 1000})
    assert execution.result(timeout=300) == sum(i * i for i in range(1000))
    x = execution.history()
    assert x["runs"] == 2 and len(x["steps"][0]["calls"]) == 1000
    page = tf.client.list_triggers(execution=execution.id, active=False)
    (join,) = page["items"]
    assert join["fired"] == 1 and join["condition"]["kind"] == "join"


def test_map_reduce(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.reducing, {"n": 8})
    assert execution.result(timeout=120) == sum(i * i for i in range(8)) + 1
    kinds = [s["kind"] for s in execution.history()["steps"]]
    assert kinds == ["map", "reduce", "call"]


def test_a_failed_call_raises_in_the_coordinator(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.catching)
    answer = execution.result(timeout=60)
    assert answer.startswith("caught: call ") and "ValueError: no 7" in answer


def test_non_determinism_is_named(tf: TriggerflowExecutor) -> None:
    execution = tf.run(co.branching)
    with pytest.raises(ExecutionFailed) as failed:
        execution.result(timeout=180)
    error = failed.value.error or ""
    assert "NonDeterminismError" in error and "non-determinism" in error
    left = "callable:tests.durable_coordinators.left"
    right = "callable:tests.durable_coordinators.right"
    assert left in error and right in error
    assert execution.status == "ERROR"


def test_the_same_execution_id_is_one_execution(
    local: LocalCluster, tf: TriggerflowExecutor
) -> None:
    first = tf.run(co.chain, {"steps": 2}, execution_id="once-only")
    second = tf.run(co.chain, {"steps": 2}, execution_id="once-only")
    assert first.id == second.id == "once-only"
    assert first.result(timeout=60) == 2
    x = first.history()
    assert x["runs"] == 3
    again = urllib.request.Request(
        local.url + "/v1/executions",
        data=json.dumps({"function": x["function"], "id": "once-only"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(again, timeout=10) as answer:
        assert answer.status == 200  # not 201: nothing was started
        assert json.loads(answer.read())["runs"] == 3


def test_cli_execution_show(local: LocalCluster, tf: TriggerflowExecutor, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from fum_cli.main import app

    execution = tf.run(co.chain, {"steps": 2})
    execution.result(timeout=60)
    env = {"FUM_API_URL": local.url, "FUM_CONFIG": str(tmp_path / "c.toml"), "FUM_API_KEY": ""}
    shown = CliRunner().invoke(app, ["execution", "show", execution.id], env=env)
    assert shown.exit_code == 0, shown.output
    assert "DONE" in shown.stdout and "ran 3 times" in shown.stdout
    as_json = CliRunner().invoke(app, ["execution", "show", execution.id, "--json"], env=env)
    assert json.loads(as_json.stdout)["runs"] == 3
    missing = CliRunner().invoke(app, ["execution", "show", "nope"], env=env)
    assert missing.exit_code == 1


COORDINATOR = """
from fum.durable import FunctionExecutor, coordinator

@coordinator
def handle(params):
    fexec = FunctionExecutor()
    fexec.map(params["fn"], [{"n": i} for i in range(params["n"])])
    echoed = fexec.get_result()
    fexec.call_async(params["fn"], {"n": sum(e["n"] for e in echoed)})
    return fexec.get_result()
"""


def test_a_deployed_function_as_coordinator(tf: TriggerflowExecutor) -> None:
    client = tf.client
    client.put_runtime("pyh", "pythonruntime", "python3 -m fum main:handle")
    client.deploy_function("d-echo", targz({"main.py": FUNCTIONS["echo"]}), runtime="pyh")
    client.deploy_function("d-coord", targz({"main.py": COORDINATOR}), runtime="pyh")
    execution = tf.run("d-coord", {"fn": "d-echo", "n": 4})
    assert execution.result(timeout=60) == {"n": 6}
    x = execution.history()
    assert x["function"] == "d-coord" and x["runs"] == 3
    assert [s["identity"] for s in x["steps"]] == ["function:d-echo"] * 2
    # started by name through the plain client too; a bad start is refused
    started = client.start_execution("d-coord", {"fn": "d-echo", "n": 1})
    assert started["status"] in ("RUNNING", "WAITING", "DONE")
    with pytest.raises(NotFound):
        client.start_execution("no-such-function")
    with pytest.raises(BadRequest):
        client.start_execution("d-coord", [1, 2])  # params must be an object
