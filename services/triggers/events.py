"""Events as CloudEvents 1.0: every call's end, and what clients publish."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

CALL_DONE = "fum.call.done"
CALL_FAILED = "fum.call.failed"
SPEC_VERSION = "1.0"

# Subjects and types end up in SQL lookups and URLs: printable, bounded.
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A stored event; ``seq`` is its place in the db's stream (1, 2, ...)."""

    id: str
    source: str
    type: str
    subject: str
    time: float
    data: Any = None
    seq: int = 0
    specversion: str = SPEC_VERSION


class EventIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An event as a client publishes it; ``id`` defaults to a fresh one. A repeated id
    is the same event (stored once, processed once)."""

    type: Text
    subject: Text
    source: Text = "client"
    id: Text | None = None
    data: Any = None
    specversion: str = SPEC_VERSION


def call_subject(call_num: int) -> str:
    """The subject of a call's termination event."""
    return f"calls/{call_num}"


def call_event(
    call_num: int,
    func_name: str,
    status: str,
    result: Any,
    error: str | None,
    time: float,
) -> Event:
    """The event of a call's end; its id is the call's, so it can never be stored twice."""
    return Event(
        id=f"call-{call_num}",
        source="fum/db",
        type=CALL_DONE if status in ("DONE", "WAITING") else CALL_FAILED,
        subject=call_subject(call_num),
        time=time,
        data={
            "callNum": call_num,
            "function": func_name,
            "status": status,
            "result": result,
            "error": error,
        },
    )
