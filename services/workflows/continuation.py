"""What runs after a step returns, on the worker that ran it: no orchestrator.

``plan`` turns a step's configuration, its input payload and its output into what it
sends on: the next instances (a chain, a branch, a map, a parallel fan-out) and its slot
in the fan-ins it feeds. The db then does it in one transaction with the checkpoint
(services/workflows/checkpoint.py): the checkpoint is a conditional insert, and only the
run that wins it creates the next calls, as PENDING calls the api places
(``PlaceCalls``). A next instance's call has a uuid made from its session and instance
name, so whatever sends it twice makes one call.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from services.common.db_client import DbClient
from services.common.db_protocol import FinishInstance
from services.common.errors import NotFound
from services.common.models import (
    Call,
    CallUpdate,
    FanInSlot,
    NextInstance,
    NextStep,
    Session,
    Step,
)
from services.common.tasks import retrying

from .expressions import ExpressionError, parsed, parsed_modifier, variables_of
from .payload import (
    FanOut,
    apply_modifiers,
    check_fan_out,
    fan_in_slot,
    indexes,
    instance_name,
    make,
    size,
)

log = structlog.get_logger()

_NAMESPACE = uuid.UUID("6f1d2a9e-2b9c-4c57-9a39-0c6f0a0e5e11")
_NAMESPACE_BYTES = _NAMESPACE.bytes


class ContinuationError(Exception):
    """The step's output or fan-out does not fit its configuration (a Map over a value
    that is not a list, an expression that fails): the instance ends ERROR."""


class Instance(msgspec.Struct, frozen=True):
    """Where a step's call stands in its session."""

    session: str
    name: str
    fan_out: FanOut | None


class Plan(msgspec.Struct, frozen=True):
    calls: list[NextInstance] = []
    fan_ins: list[FanInSlot] = []

    @property
    def ends(self) -> bool:
        """Sends nothing on: its output is (part of) the session's result."""
        return not self.calls and not self.fan_ins


def call_uuid(session: str, instance: str) -> str:
    """``uuid.uuid5(_NAMESPACE, f"{session}/{instance}").hex``, made without the UUID
    object (a third of the time: every step of a map makes one for each call it sends)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{session}/{instance}".encode()).digest())
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    return digest[:16].hex()


def instance_of(step: Step, params: bytes) -> Instance | None:
    """The instance a call's params stand for, or None if they are not a session's payload
    (the function was invoked on its own, outside a session); ``ContinuationError`` for
    a payload whose Fan-out is malformed."""
    try:
        payload = msgspec.json.decode(params)
    except msgspec.DecodeError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("Session"), str):
        return None
    try:
        fan_out = check_fan_out(payload.get("Fan-out"))
    except ValueError as exc:
        raise ContinuationError(str(exc)) from None
    session = payload["Session"]
    return Instance(session, instance_name(step.name, fan_out), fan_out)


_encode = msgspec.json.Encoder().encode


def _next_call(step: Step, nxt: NextStep, session: str, payload: dict[str, Any]) -> NextInstance:
    name = instance_name(nxt.name, payload.get("Fan-out"))
    return NextInstance(
        instance=name,
        uuid=call_uuid(session, name),
        func_name=f"{step.app}.{nxt.name}",
        params=_encode(payload),
    )


def plan(step: Step, instance: Instance, output: Any) -> Plan:
    """What the instance sends on, given its output (``ContinuationError`` if it cannot)."""
    try:
        return _plan(step, instance, output)
    except ExpressionError as exc:
        raise ContinuationError(str(exc)) from None


def _plan(step: Step, instance: Instance, output: Any) -> Plan:
    own = instance.fan_out
    env = variables_of(indexes(own), size(own), output)
    post = apply_modifiers(own, [parsed_modifier(m) for m in step.modifiers])
    scalars = sum(1 for n in step.next if n.input_type == "Scalar") if step.parallel else 0
    session = instance.session
    calls: list[NextInstance] = []
    fan_ins: list[FanInSlot] = []
    branch = 0
    for nxt in step.next:
        parallel_index = branch
        if nxt.input_type == "Scalar":
            branch += 1
        if nxt.conditional is not None and not parsed(nxt.conditional).evaluate(env):
            continue
        if nxt.input_type == "Scalar":
            fan_out = post
            if scalars > 1:
                fan_out = {"Type": "Parallel", "Index": parallel_index, "Size": scalars}
                if post:
                    fan_out["OuterLoop"] = post
            calls.append(_next_call(step, nxt, session, make(output, session, fan_out)))
        elif nxt.input_type == "Map":
            if not isinstance(output, list):
                raise ContinuationError(
                    f"{nxt.name} is a Map: {step.name} must return a list, "
                    f"not {type(output).__name__}"
                )
            for i, item in enumerate(output):
                fan_out = {"Type": "Map", "Index": i, "Size": len(output)}
                if post:
                    fan_out["OuterLoop"] = post
                calls.append(_next_call(step, nxt, session, make(item, session, fan_out)))
        else:
            me = instance.name
            place = fan_in_slot(nxt.values, own, me)
            if place is None:
                raise ContinuationError(
                    f"{me} feeds the fan-in {nxt.name}, whose Values do not name it: "
                    f"{', '.join(nxt.values)}"
                )
            meta: dict[str, Any] = {"Session": session}
            if post:
                meta["Fan-out"] = post
            target = _next_call(step, nxt, session, meta)
            fan_ins.append(FanInSlot(target=target, slot=place[0], size=place[1]))
    return Plan(calls, fan_ins)


class Verdict(msgspec.Struct, frozen=True):
    """What the worker does with a step's call before it runs: run it, or report this
    outcome without running (its checkpoint exists, or its session is over)."""

    run: bool
    status: str = "DONE"
    result: bytes | None = None
    error: str | None = None


RUN = Verdict(run=True)
DEADLINE = 120.0  # seconds a step's db request is tried again (a db restart)


class Continuations:
    """The worker's share of the workflows: it looks before a step runs (if it may be a
    duplicate), and right after
    the step returns it writes the checkpoint and sends on (one db request), then hands
    the calls it made to the api to place. Nothing else takes part in a session."""

    def __init__(
        self,
        db: DbClient,
        place: Callable[[list[Call]], None],
        ended: Callable[[Session], None],
    ) -> None:
        self._db = db
        self._place = place
        self._ended = ended

    def before(self, step: Step, call: Call) -> Verdict | None:
        """Before a step's call runs, what needs no db: run it if it is the first dispatch
        of its instance's own call (or a call outside a session), fail it if its Fan-out
        is malformed; None if it may be a duplicate: ``look`` asks the db."""
        try:
            instance = instance_of(step, call.params)
        except ContinuationError as exc:
            return Verdict(run=False, status="ERROR", error=str(exc))
        if instance is None:
            return RUN  # invoked on its own, outside a session: a plain call
        if call.attempts <= 1 and call.uuid == call_uuid(instance.session, instance.name):
            # The first dispatch of the instance's own call (the one call its uuid allows)
            # cannot find a checkpoint: a run that wrote one finished this call in the same
            # transaction, and a finished call is not dispatched again. Anything else may
            # be a duplicate (dispatched again, or another call of the instance): it looks.
            return RUN
        return None

    async def look(self, step: Step, call: Call) -> Verdict:
        """A step's call that may be a duplicate (``before`` said None): found
        checkpointed, it re-sends what its checkpoint sent (still PENDING) and does not
        run; a session that ended runs nothing more."""
        instance = instance_of(step, call.params)
        assert instance is not None
        try:
            state = await retrying(
                lambda: self._db.look_up_instance(instance.session, instance.name),
                DEADLINE,
                "look up instance",
            )
        except NotFound as exc:
            return Verdict(run=False, status="ERROR", error=exc.message)
        if state.status != "RUNNING":
            return Verdict(
                run=False,
                status="ERROR",
                error=f"not run: session {instance.session} is {state.status}",
            )
        if state.checkpoint is None:
            return RUN
        log.info("workflow.checkpointed", session=instance.session, instance=instance.name)
        if state.sent:
            self._place(state.sent)
        return Verdict(run=False, result=state.checkpoint)

    async def after(self, step: Step, final: Call, update: CallUpdate) -> Call | None:
        """Right after the step returned: checkpoint and continuations in one db request;
        the call as stored, or None if the call is not a session's (a plain call)."""
        try:
            instance = instance_of(step, final.params)
        except ContinuationError:
            instance = None  # ``before`` failed it: nothing to send on
        if instance is None:
            return None
        sent = Plan()
        if update.status == "DONE":
            try:
                output = msgspec.json.decode(update.result) if update.result else None
                sent = plan(step, instance, output)
            except (ContinuationError, msgspec.DecodeError) as exc:
                update = msgspec.structs.replace(
                    update, status="ERROR", result=None, error=f"after {step.name}: {exc}"
                )
        request = FinishInstance(
            session=instance.session,
            instance=instance.name,
            update=update,
            calls=sent.calls,
            fan_ins=sent.fan_ins,
        )
        reply = await retrying(
            lambda: self._db.finish_instance(request), DEADLINE, "finish instance"
        )
        if reply.session is None:
            raise NotFound(reply.error or f"no session {instance.session!r}")
        if reply.sent:
            self._place(reply.sent)
        if reply.session.status != "RUNNING":
            self._ended(reply.session)
        if not reply.won:
            log.info("workflow.duplicate", session=instance.session, instance=instance.name)
        if reply.call is not None:
            return reply.call
        return msgspec.structs.replace(
            final, status=update.status, result=update.result, error=update.error
        )
