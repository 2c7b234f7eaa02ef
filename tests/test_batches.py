"""Short calls handed to a warm sandbox in batches: how the worker sizes them, and, in a
real cluster, that each call of a batch keeps its own result, output, timeout and retry."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
import zmq

from services.common.models import Call, Function, Runtime
from services.common.pool_protocol import CallDone, Outcome, Run
from services.common.protocol import Message
from services.worker.pool import MAX_BATCH, Job, Pool, Slot
from services.worker.settings import WorkerSettings

from .conftest import start_cluster
from .support import Api, targz
from .test_faults import submit, wait_all

RUNTIME = Runtime(name="py", image="", run="python3 -m fum main:handle")
SHORT = Function(name="short", runtime="py", sha256="a" * 64, filename="f.tar.gz", size=1)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[Pool, list[tuple[str, Message]]]]:
    """A node's pool with no miniworker processes: its messages to them are recorded."""
    settings = WorkerSettings(
        node_id=1, node_dir=str(tmp_path), pool_bind="tcp://127.0.0.1:0", capacity=0, spare=0
    )
    ctx = zmq.Context()
    pool = Pool(settings, ctx, None, {}, lambda job: None, lambda job, outcome: None)  # type: ignore[arg-type]
    sent: list[tuple[str, Message]] = []
    pool._send = lambda slot, message: sent.append((slot.mw_id, message))  # type: ignore[method-assign]
    pool.runtimes, pool.functions = {"py": RUNTIME}, {"short": SHORT}
    try:
        yield pool, sent
    finally:
        await pool.close()
        ctx.destroy(linger=0)


def queue_calls(pool: Pool, count: int, first: int = 1) -> None:
    for num in range(first, first + count):
        call = Call(call_num=num, uuid=f"u{num}", func_name="short", params=b"{}")
        pool.submit(Job(call, 5.0, SHORT, Path("pkg")))


def warm_slots(pool: Pool, *names: str) -> None:
    for name in names:
        pool._slots[name] = Slot(mw_id=name, runtime=RUNTIME, function=SHORT, state="idle")


def run_sizes(sent: list[tuple[str, Message]]) -> list[int]:
    return [len(m.calls) for _, m in sent if isinstance(m, Run)]


@pytest.mark.parametrize(
    ("mean", "sizes"),
    [
        (None, [1, 1]),  # nothing known of the function yet: one call at a time
        (0.05, [1, 1]),  # long calls: one at a time, other sandboxes may start meanwhile
        (WorkerSettings().batch_work / 10, [10, 10]),  # short calls: about batch_work of them
        (1e-7, [MAX_BATCH, MAX_BATCH]),
    ],
)
async def test_warm_slots_take_short_calls_in_batches(
    pool: tuple[Pool, list[tuple[str, Message]]], mean: float | None, sizes: list[int]
) -> None:
    node, sent = pool
    if mean is not None:
        node._durations["short"] = mean
    warm_slots(node)  # none idle while the calls queue up
    queue_calls(node, 200)
    warm_slots(node, "a", "b")
    node._schedule(preload=False)
    assert run_sizes(sent) == sizes
    first = [m.calls[0].call_num for _, m in sent if isinstance(m, Run)]
    assert first == [1, 1 + sizes[0]]  # in order, each slot its own run of them


async def test_a_batch_work_of_zero_hands_every_call_alone(
    pool: tuple[Pool, list[tuple[str, Message]]],
) -> None:
    node, sent = pool
    node.settings = msgspec.structs.replace(node.settings, batch_work=0)
    node._durations["short"] = 1e-7
    warm_slots(node)
    queue_calls(node, 20)
    warm_slots(node, "a", "b")
    node._schedule(preload=False)
    assert run_sizes(sent) == [1, 1]


async def test_a_batch_is_no_more_than_the_slots_share_of_the_queue(
    pool: tuple[Pool, list[tuple[str, Message]]],
) -> None:
    node, sent = pool
    node._durations["short"] = 1e-7
    queue_calls(node, 9)
    warm_slots(node, "a", "b", "c")
    node._schedule(preload=False)
    assert run_sizes(sent) == [3, 3, 3]


async def test_a_retried_call_runs_alone(pool: tuple[Pool, list[tuple[str, Message]]]) -> None:
    """A call retried after its sandbox died mid-batch may not have been the one that
    killed it: it runs alone, never blamed for another twice."""
    node, _ = pool
    node._durations["short"] = 1e-7
    warm_slots(node, "a")
    jobs = deque(
        Job(Call(call_num=n, uuid=f"u{n}", func_name="short", params=b"{}"), 5.0, SHORT, Path("p"))
        for n in range(1, 7)
    )
    jobs[2].alone = True
    taken = [[j.call.call_num for j in node._batch(node._slots["a"], jobs)] for _ in range(3)]
    assert taken == [[1, 2], [3], [4, 5, 6]]


async def test_calls_a_batch_never_began_go_back_to_the_head_of_the_queue(
    pool: tuple[Pool, list[tuple[str, Message]]],
) -> None:
    node, sent = pool
    node._durations["short"] = 1e-7
    warm_slots(node, "a")
    queue_calls(node, 1)  # taken alone at once
    queue_calls(node, 10, first=2)  # wait for the slot
    assert run_sizes(sent) == [1]
    done = Outcome(call_num=1, status="DONE", started_at=1.0, finished_at=1.0)
    node._on_call_done(node._slots["a"], CallDone(outcomes=[done], ready=True))
    assert run_sizes(sent) == [1, 10]
    slot = node._slots["a"]
    ended = Outcome(call_num=2, status="DONE", started_at=1.0, finished_at=1.0)
    timed_out = Outcome(call_num=3, status="TIMEOUT", started_at=1.0, finished_at=6.0)
    unrun = list(range(4, 12))
    node._on_call_done(slot, CallDone(outcomes=[ended, timed_out], unrun=unrun))
    assert not slot.jobs and slot.state == "busy"  # relaunching: a Ready follows
    assert [job.call.call_num for job in node._queues["short"]] == unrun
    assert all(job.call.attempts == 0 for job in node._queues["short"])


# A function that prints which call it is; one of them may hang or kill its process.
NOISY = """
import os
import time

def handle(params):
    n = params["n"]
    print(f"call {n}")
    if params.get("hang"):
        time.sleep(60)
    if params.get("die"):
        os._exit(3)
    return n
"""


@pytest.mark.parametrize("fault", [None, "hang", "die"])
async def test_each_call_of_a_batch_keeps_its_result_output_and_fate(
    tmp_path_factory: pytest.TempPathFactory, fault: str | None
) -> None:
    """One sandbox, many short calls: they run in batches. Each result and output is the
    call's own; a call that hangs times out and one that kills its process is retried once,
    then fails; the calls after it in its batch run on the relaunched sandbox, once (and
    the ones whose reports died with the process, again)."""
    # their calls take longer than the default 2 ms of a batch on a busy host (a call's
    # time is taken at the miniworker, messages included): a batch of a second
    cluster = start_cluster(
        tmp_path_factory,
        preload="function",
        capacity=1,
        log_level="debug",
        env={"FUM_BATCH_WORK": "1"},
    )
    try:
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            await api.runtime("pyh")
            status, _ = await api.deploy("noisy", "pyh", targz({"main.py": NOISY}), timeout=3)
            assert status in (200, 201)
            for n in range(5):  # the worker learns its calls are short
                _, warm = await api.invoke("noisy", {"n": n})
                assert warm["status"] == "DONE"
            bad = 47
            params = [{"n": n, **({fault: True} if fault and n == bad else {})} for n in range(120)]
            nums = await submit(api, "noisy", params)
            calls = {c["params"]["n"]: c for c in await wait_all(api, nums, 120)}
            for n, call in calls.items():
                _, logs = await api.request("GET", f"/v1/calls/{call['callNum']}/logs")
                if fault and n == bad:
                    continue
                assert (call["status"], call["result"]) == ("DONE", n)
                assert logs["logs"] == f"call {n}\n", (n, logs)
                # the reports a killed process had not sent yet die with it: those calls
                # of its batch run again (at least once, as any call whose sandbox died)
                assert call["attempts"] in ((1, 2) if fault == "die" else (1,)), (n, call)
            worker_log = (cluster.data_dir / "logs" / "worker-0.log").read_text()
            assert "miniworker.batch" in worker_log  # they did go in batches
            if fault == "hang":
                assert calls[bad]["status"] == "TIMEOUT" and calls[bad]["attempts"] == 1
            if fault == "die":
                assert calls[bad]["status"] == "ERROR" and calls[bad]["attempts"] == 2
                assert "exit" in calls[bad]["error"]
    finally:
        cluster.stop()
