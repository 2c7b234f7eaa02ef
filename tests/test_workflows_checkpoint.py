"""The db's side of workflow steps (services/workflows/checkpoint.py), in process: the steps
of one ``FinishInstances`` message are done together, and end exactly as the same steps done
one after the other (``finish_instance``, each alone) would: with duplicates among them, a
fan-in's set filled, a step that fails and a session that ends inside the same message."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from services.common.db_protocol import FinishInstance, InstanceFinished
from services.common.errors import NotFound
from services.common.models import Call, CallUpdate, NewCall, NextStep, Session, Step
from services.db.settings import DbSettings
from services.db.store import Store
from services.workflows import checkpoint
from services.workflows.continuation import call_uuid, instance_of, plan

T = TypeVar("T")

# Split sends its list to a map of Work, whose set Sum takes, and to Side, which stays
# open while the set fills (or not: the session ends at the last of Side and Sum).
SPLIT = Step(
    app="m",
    name="Split",
    start=True,
    next=[NextStep(name="Work", input_type="Map"), NextStep(name="Side")],
    parallel=True,
)
WORK = Step(
    app="m",
    name="Work",
    next=[NextStep(name="Sum", input_type="Fan-in", values=["Work-unumIndex-*"])],
    modifiers=["Pop"],
)
SUM = Step(app="m", name="Sum")
SIDE = Step(app="m", name="Side")
CONFIGS = {step.function: step for step in (SPLIT, WORK, SUM, SIDE)}
SESSION = "5e5510" * 5 + "ab"


class Twin:
    """A store whose steps are done as one message (``grouped``) or one step at a time."""

    def __init__(self, store: Store, grouped: bool, keep: bool) -> None:
        self.store, self.grouped, self.keep = store, grouped, keep

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        def tx() -> T:
            with self.store.transaction():
                return fn(*args)

        return await self.store.run(tx)

    async def finish(self, steps: list[FinishInstance]) -> list[InstanceFinished]:
        if self.grouped:
            return await self.run(checkpoint.finish_instances, self.store, steps, self.keep)
        return await self.run(self._one_by_one, steps)

    def _one_by_one(self, steps: list[FinishInstance]) -> list[InstanceFinished]:
        replies = []
        for step in steps:
            try:
                replies.append(checkpoint.finish_instance(self.store, step, self.keep))
            except NotFound as exc:
                replies.append(
                    InstanceFinished(won=False, call=None, sent=[], session=None, error=exc.message)
                )
        return replies

    def state(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table a session touches, without the times of day."""
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True)
        try:
            queries = {
                "sessions": "SELECT id, status, open, error, result FROM sessions ORDER BY id",
                "instances": "SELECT * FROM instances ORDER BY session, name",
                "checkpoints": "SELECT * FROM checkpoints ORDER BY session, instance",
                "slots": "SELECT * FROM fan_in_slots ORDER BY session, target, slot",
                "sets": "SELECT * FROM fan_ins ORDER BY session, target",
                "calls": "SELECT call_num, uuid, func_name, status, result, error, params "
                "FROM calls ORDER BY call_num",
                "events": "SELECT seq, type, subject, data FROM events ORDER BY seq",
            }
            return {name: db.execute(sql).fetchall() for name, sql in queries.items()}
        finally:
            db.close()

    store_path: Path


@pytest.fixture
async def twins(tmp_path: Path) -> AsyncIterator[Callable[[bool], Any]]:
    stores: list[Store] = []

    async def make(keep: bool) -> tuple[Twin, Twin]:
        made = []
        for grouped in (True, False):
            path = tmp_path / f"{len(stores)}.sqlite3"
            store = await Store.open(DbSettings(db_path=str(path)))
            stores.append(store)
            twin = Twin(store, grouped, keep)
            twin.store_path = path
            made.append(twin)
        return made[0], made[1]

    yield make
    for store in stores:
        await store.close()


def step_of(call: Call, output: Any, status: str = "DONE") -> FinishInstance:
    """What a worker sends when ``call`` returns ``output`` (or fails)."""
    config = CONFIGS[call.func_name]
    instance = instance_of(config, call.params)
    assert instance is not None
    sent = plan(config, instance, output) if status == "DONE" else None
    update = CallUpdate(
        call_num=call.call_num,
        status=status,
        result=msgspec.json.encode(output) if status == "DONE" else None,
        error=None if status == "DONE" else "ValueError: no luck",
        finished_at=1.0,
    )
    return FinishInstance(
        session=instance.session,
        instance=instance.name,
        update=update,
        calls=sent.calls if sent else [],
        fan_ins=sent.fan_ins if sent else [],
    )


def seen(reply: InstanceFinished) -> tuple[Any, ...]:
    """A reply without the times of day."""
    call = reply.call
    session = reply.session
    return (
        reply.won,
        None if call is None else (call.call_num, call.status, call.result),
        [c.uuid for c in reply.sent],
        None if session is None else (session.status, session.result, session.error),
        reply.error,
    )


async def both(pair: tuple[Twin, Twin], steps: list[FinishInstance]) -> list[InstanceFinished]:
    """The steps done as one message and one at a time: the same replies, the same db."""
    grouped, alone = pair
    replies = await grouped.finish(steps)
    expected = await alone.finish(steps)
    assert [seen(r) for r in replies] == [seen(r) for r in expected]
    assert grouped.state() == alone.state()
    return replies


async def started(
    pair: tuple[Twin, Twin], items: int, session: str = SESSION
) -> tuple[list[Call], Call]:
    """A session of the map app whose Split returned ``items`` numbers: the Work calls,
    and Side's."""
    for twin in pair:
        await twin.run(
            checkpoint.start_session,
            twin.store,
            Session(id=session, app="m", created_at=time.time()),
            "Split",
            NewCall(
                uuid=call_uuid(session, "Split"),
                func_name="m.Split",
                params=msgspec.json.encode({"Data": {"Value": items}, "Session": session}),
                created_at=1.0,
            ),
        )
    (split,) = await pair[0].run(pair[0].store.find_calls, [call_uuid(session, "Split")])
    (reply,) = await both(pair, [step_of(split, list(range(items)))])
    *works, side = reply.sent
    assert side.func_name == "m.Side"
    return works, side


async def another_call(pair: tuple[Twin, Twin], call: Call) -> Call:
    """A second call of ``call``'s instance (a duplicate delivery), in both stores."""
    new = NewCall(
        uuid=f"again-{call.call_num}", func_name=call.func_name, params=call.params, created_at=1.0
    )
    made = [await twin.run(twin.store.create_calls, [new]) for twin in pair]
    assert made[0] == made[1]
    return made[0][0]


async def test_a_batch_with_duplicates_and_its_fan_in_filled(twins: Any) -> None:
    pair = await twins(False)
    works, side = await started(pair, 5)
    w1_again = await another_call(pair, works[1])
    replies = await both(
        pair,
        [
            step_of(works[0], 1),
            step_of(works[1], 2),
            step_of(w1_again, 2),  # another call of the same instance, in the same batch
            step_of(works[2], 3),
            step_of(works[1], 2),  # the same call reported twice
            FinishInstance(  # a step of no session
                session="nope", instance="Work", update=CallUpdate(call_num=99, status="DONE")
            ),
            step_of(works[3], 4),
            step_of(works[4], 5),  # fills the set (Side still open): the fan-in's call
            step_of(works[2], 3),  # a duplicate after the set is full
            step_of(side, 0),
        ],
    )
    won = [True, True, False, True, False, False, True, True, False, True]
    assert [r.won for r in replies] == won
    assert replies[2].call is not None and replies[2].call.result == b"2"  # the winner's
    assert replies[5].error == "no session 'nope'"
    (sum_call,) = replies[7].sent
    assert sum_call.func_name == "m.Sum"
    assert msgspec.json.decode(sum_call.params)["Data"]["Value"] == [1, 2, 3, 4, 5]
    assert all(not r.sent for i, r in enumerate(replies) if i != 7)
    (last,) = await both(pair, [step_of(sum_call, 15)])
    assert last.session is not None and last.session.status == "DONE"
    assert last.session.result == b"[0,15]"  # Side's output and Sum's, in call order
    assert not pair[0].state()["checkpoints"]  # removed when the session ended
    # a duplicate that finishes after its session ended: its instance is finished already
    (late,) = await both(pair, [step_of(works[3], 4)])
    assert late.session is not None and late.session.status == "DONE" and not late.sent


async def test_a_step_that_fails_mid_batch_and_a_session_that_ends_in_it(twins: Any) -> None:
    pair = await twins(False)
    works, side = await started(pair, 4)
    other, other_side = await started(pair, 2, session="0" * 32)
    replies = await both(
        pair,
        [
            step_of(works[0], 1),
            step_of(other[0], 1),
            step_of(other_side, [0, 1]),
            step_of(works[1], None, status="ERROR"),  # ends its session ERROR
            step_of(works[2], 3),  # its session is over: nothing sent on
            step_of(other[1], 2),  # fills the other session's set
            step_of(works[3], 4),
            step_of(side, None, status="TIMEOUT"),  # its session is over already
        ],
    )
    session = replies[3].session
    assert session is not None and session.status == "ERROR"
    assert [r.won for r in replies] == [True, True, True, False, True, True, True, False]
    assert [len(r.sent) for r in replies] == [0, 0, 0, 0, 0, 1, 0, 0]
    (sum_call,) = replies[5].sent
    (last,) = await both(pair, [step_of(sum_call, 3)])
    assert last.session is not None and last.session.status == "DONE"


@pytest.mark.parametrize("seed", range(12))
async def test_any_batches_end_as_the_steps_one_by_one(twins: Any, seed: int) -> None:
    """A map's sources in random order, some delivered twice, in random batches: the same
    replies and the same db as one at a time (checkpoints kept, to compare them too)."""
    rng = random.Random(seed)
    pair = await twins(True)
    items = rng.randint(2, 9)
    works, side = await started(pair, items)
    steps = [step_of(call, i + 1) for i, call in enumerate(works)]
    steps.append(step_of(side, 0))
    for _ in range(rng.randint(0, 4)):
        i = rng.randrange(items)
        call = works[i] if rng.random() < 0.5 else await another_call(pair, works[i])
        steps.append(step_of(call, i + 1))
    rng.shuffle(steps)
    if rng.random() < 0.25:
        steps.insert(rng.randrange(len(steps)), step_of(works[0], None, status="TIMEOUT"))
    if rng.random() < 0.25:
        steps.insert(rng.randrange(len(steps)), step_of(rng.choice(works), 0))  # a late one
    sent: list[Call] = []
    while steps:
        size = rng.randint(1, len(steps))
        batch, steps = steps[:size], steps[size:]
        sent.extend(c for r in await both(pair, batch) for c in r.sent)
    sums = list({c.call_num: c for c in sent if c.func_name == "m.Sum"}.values())
    assert len(sums) <= 1  # one call of the fan-in (a duplicate re-sends the same one)
    if sums:
        (last,) = await both(pair, [step_of(sums[0], sum(range(1, items + 1)))])
        assert last.session is not None and last.session.status in ("DONE", "ERROR")


FORK = Step(
    app="m", name="Fork", start=True, next=[NextStep(name="A"), NextStep(name="B")], parallel=True
)
A, B = (Step(app="m", name=n, next=[NextStep(name="End")], modifiers=["Pop"]) for n in "AB")
END = Step(app="m", name="End")
CONFIGS.update({step.function: step for step in (FORK, A, B, END)})


@pytest.mark.parametrize("together", [True, False])
async def test_two_branches_that_send_on_the_same_instance_make_one(
    twins: Any, together: bool
) -> None:
    """A and B both send on to ``End`` (no fan-in, their fan-out popped): one instance,
    one call, whether they return in one message or in two."""
    pair = await twins(False)
    for twin in pair:
        await twin.run(
            checkpoint.start_session,
            twin.store,
            Session(id=SESSION, app="m", created_at=time.time()),
            "Fork",
            NewCall(
                uuid=call_uuid(SESSION, "Fork"),
                func_name="m.Fork",
                params=msgspec.json.encode({"Data": {"Value": 1}, "Session": SESSION}),
                created_at=1.0,
            ),
        )
    (fork,) = await pair[0].run(pair[0].store.find_calls, [call_uuid(SESSION, "Fork")])
    (forked,) = await both(pair, [step_of(fork, 1)])
    a, b = forked.sent
    if together:
        replies = await both(pair, [step_of(a, 2), step_of(b, 3)])
    else:
        replies = [*await both(pair, [step_of(a, 2)]), *await both(pair, [step_of(b, 3)])]
    assert [c.func_name for r in replies for c in r.sent] == ["m.End", "m.End"]
    assert replies[0].sent == replies[1].sent  # the same call
    (last,) = await both(pair, [step_of(replies[0].sent[0], 4)])
    assert last.session is not None and last.session.status == "DONE"
    assert last.session.result == b"4"
