"""A trigger: the events that activate it, its condition, its action, its context.

Conditions and actions are data the db evaluates (tagged by ``kind``), so a trigger
runs in the transaction that stores its event: processed once, whatever restarts. A
Python condition or action is a call of the SDK's built-in function, made by the db:
never run in a service.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .events import Text

MAX_ACTIVATIONS = 10_000


class Activation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Events of this subject (and type; any type when it is left out)."""

    subject: Text
    type: Text | None = None


class TrueCondition(msgspec.Struct, frozen=True, tag="true", tag_field="kind"):
    """Fires on every event."""


class JoinCondition(msgspec.Struct, frozen=True, tag="join", tag_field="kind"):
    """Fires once ``count`` events arrived, or once each of ``subjects`` sent one."""

    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    subjects: list[Text] | None = None


class ThresholdCondition(msgspec.Struct, frozen=True, tag="threshold", tag_field="kind"):
    """Counts events in ``context[key]``; fires when it reaches ``value``."""

    key: Text
    value: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class PythonCondition(msgspec.Struct, frozen=True, tag="python", tag_field="kind"):
    """A Python callable ``condition(context, event) -> bool``, cloudpickled by the SDK
    into ``call`` (the params of its built-in ``function``, less the arguments). It runs
    in a sandbox, one event at a time; the context it changes is kept."""

    function: str
    call: dict[str, Any]


Condition = TrueCondition | JoinCondition | ThresholdCondition | PythonCondition


class EventTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subject: Text
    type: Text


class InvokeAction(msgspec.Struct, frozen=True, tag="invoke", tag_field="kind"):
    """Invoke ``function`` with params ``{"events": [...], "context": {...}}``."""

    function: str


class PublishAction(msgspec.Struct, frozen=True, tag="publish", tag_field="kind"):
    """Publish an event whose data holds the triggering events' ids."""

    event: EventTemplate


class PassAction(msgspec.Struct, frozen=True, tag="pass", tag_field="kind"):
    """Do nothing (the context and the fired count still change)."""


class TerminateAction(msgspec.Struct, frozen=True, tag="terminate", tag_field="kind"):
    """Stop the trigger: it takes no more events."""


class PythonAction(msgspec.Struct, frozen=True, tag="python", tag_field="kind"):
    """A Python callable ``action(context, events)``, cloudpickled by the SDK: a call of
    its built-in ``function`` (what it changes in the context is its own)."""

    function: str
    call: dict[str, Any]


class ResumeAction(msgspec.Struct, frozen=True, tag="resume", tag_field="kind"):
    """Run a waiting coordinator again (made by the db for a coordinator, not by clients)."""

    execution: str


Action = InvokeAction | PublishAction | PassAction | TerminateAction | PythonAction | ResumeAction


class TriggerIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A trigger as a client puts it."""

    activation: list[Activation]
    condition: Condition = TrueCondition()
    action: Action = PassAction()
    context: dict[str, Any] = {}
    transient: bool = True


class Trigger(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A stored trigger. ``active`` is false once a transient one fired or it
    terminated; ``fired`` counts its actions; ``events`` the ids it joins so far."""

    id: str
    activation: list[Activation]
    condition: Condition
    action: Action
    context: dict[str, Any]
    transient: bool
    active: bool = True
    fired: int = 0
    events: list[str] = []
    execution: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
