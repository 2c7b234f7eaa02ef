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

import uuid
from typing import Any

import msgspec

from services.common.models import NextStep, Step

from .expressions import Expression, ExpressionError, Modifier, variables_of
from .payload import (
    FanOut,
    apply_modifiers,
    check_fan_out,
    expand_names,
    indexes,
    instance_name,
    make,
    size,
)

_NAMESPACE = uuid.UUID("6f1d2a9e-2b9c-4c57-9a39-0c6f0a0e5e11")


class ContinuationError(Exception):
    """The step's output or fan-out does not fit its configuration (a Map over a value
    that is not a list, an expression that fails): the instance ends ERROR."""


class Instance(msgspec.Struct, frozen=True):
    """Where a step's call stands in its session."""

    session: str
    name: str
    fan_out: FanOut | None


class NextCall(msgspec.Struct, frozen=True, rename="camel"):
    """A next instance to create: its call's uuid, function and params (the payload)."""

    instance: str
    uuid: str
    func_name: str
    params: bytes


class FanInSlot(msgspec.Struct, frozen=True, rename="camel"):
    """This instance's slot in a fan-in's set; the one that fills the set creates the
    fan-in's call, whose params are ``meta`` with the sources' outputs as its Data."""

    target: NextCall  # params: the payload without its Data
    slot: int  # this instance's place among the fan-in's Values, as they expand
    size: int


class Plan(msgspec.Struct, frozen=True):
    calls: list[NextCall] = []
    fan_ins: list[FanInSlot] = []

    @property
    def ends(self) -> bool:
        """Sends nothing on: its output is (part of) the session's result."""
        return not self.calls and not self.fan_ins


def call_uuid(session: str, instance: str) -> str:
    return uuid.uuid5(_NAMESPACE, f"{session}/{instance}").hex


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


def _next_call(step: Step, nxt: NextStep, session: str, payload: dict[str, Any]) -> NextCall:
    name = instance_name(nxt.name, payload.get("Fan-out"))
    return NextCall(
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
    post = apply_modifiers(own, [Modifier(m) for m in step.modifiers])
    scalars = sum(1 for n in step.next if n.input_type == "Scalar") if step.parallel else 0
    session = instance.session
    calls: list[NextCall] = []
    fan_ins: list[FanInSlot] = []
    branch = 0
    for nxt in step.next:
        parallel_index = branch
        if nxt.input_type == "Scalar":
            branch += 1
        if nxt.conditional is not None and not Expression(nxt.conditional).evaluate(env):
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
            sources = expand_names(nxt.values, own)
            me = instance_name(step.name, own)
            if me not in sources:
                raise ContinuationError(
                    f"{me} feeds the fan-in {nxt.name}, whose Values do not name it: {sources}"
                )
            meta: dict[str, Any] = {"Session": session}
            if post:
                meta["Fan-out"] = post
            target = _next_call(step, nxt, session, meta)
            fan_ins.append(FanInSlot(target, sources.index(me), len(sources)))
    return Plan(calls, fan_ins)
