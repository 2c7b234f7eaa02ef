"""The payload between the steps of a session, and the names of instances.

A step's call params are unum's payload::

    {"Data": {"Source": "http", "Value": <the data>},
     "Session": "<uuid4>",
     "Fan-out": {"Type": "Map" | "Parallel", "Index": i, "Size": n, "OuterLoop": {...}}}

An instance is ``<Name>`` with no fan-out, else ``<Name>-unumIndex-<i0>.<i1>...``
(innermost index first). Fan-in values name instances with ``$0``..``$9``, ``(...)``
arithmetic and a ``*`` glob over the innermost fan-out.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .expressions import ExpressionError, Modifier, parsed

FanOut = dict[str, Any]

_POSITIONAL = re.compile(r"\$([0-9])")
_PARENS = re.compile(r"\(([^()]*)\)")


def indexes(fan_out: FanOut | None) -> list[int]:
    """The fan-out indexes, innermost first."""
    found: list[int] = []
    while fan_out:
        found.append(int(fan_out["Index"]))
        fan_out = fan_out.get("OuterLoop")
    return found


def size(fan_out: FanOut | None) -> int | None:
    return int(fan_out["Size"]) if fan_out else None


def instance_name(function: str, fan_out: FanOut | None) -> str:
    found = indexes(fan_out)
    if not found:
        return function
    return f"{function}-unumIndex-{'.'.join(map(str, found))}"


def make(value: Any, session: str, fan_out: FanOut | None) -> dict[str, Any]:
    """The payload of one instance, with inline data."""
    payload: dict[str, Any] = {"Data": {"Source": "http", "Value": value}, "Session": session}
    if fan_out:
        payload["Fan-out"] = fan_out
    return payload


def check_fan_out(fan_out: Any) -> FanOut | None:
    """A Fan-out field as a client sent it: ``ValueError`` unless it is well formed."""
    if fan_out is None:
        return None
    level = fan_out
    while level is not None:
        if not isinstance(level, dict):
            raise ValueError("Fan-out must be an object")
        index, count = level.get("Index"), level.get("Size")
        if not isinstance(index, int) or not isinstance(count, int) or not 0 <= index < count:
            raise ValueError("Fan-out needs integers Index and Size, 0 <= Index < Size")
        if level.get("Type", "Map") not in ("Map", "Parallel"):
            raise ValueError("Fan-out Type is Map or Parallel")
        level = level.get("OuterLoop")
    return fan_out


def apply_modifiers(fan_out: FanOut | None, modifiers: list[Modifier]) -> FanOut | None:
    """The fan-out sent on after the Next Payload Modifiers: ``fan_out`` is left as it was
    (what a modifier changes is a copy; a ``Pop`` alone takes the outer loop as it is)."""
    copied = False
    for modifier in modifiers:
        if not fan_out:
            return None
        if modifier.pop:
            fan_out = fan_out.get("OuterLoop")
            continue
        if not copied:
            fan_out, copied = copy.deepcopy(fan_out), True
        assert modifier.value is not None and modifier.target is not None
        env = {f"i{i}": index for i, index in enumerate(indexes(fan_out))}
        env["size"] = int(fan_out["Size"])
        value = modifier.value.evaluate(env)
        if not isinstance(value, int):
            raise ExpressionError(f"{modifier.text!r} gives {value!r}, not an integer")
        if modifier.target == "size":
            fan_out["Size"] = value
            continue
        level = fan_out
        for _ in range(int(modifier.target)):
            level = level.get("OuterLoop") or {}
        if "Index" not in level:
            raise ExpressionError(f"{modifier.text!r}: no fan-out level ${modifier.target}")
        level["Index"] = value
    return fan_out


def _substituted(name: str, found: list[int]) -> str:
    if "$" not in name and "(" not in name:
        return name  # a plain name or a glob: nothing to evaluate

    def positional(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= len(found):
            raise ExpressionError(f"{name!r}: ${i} has no value here")
        return str(found[i])

    def arithmetic(match: re.Match[str]) -> str:
        value = parsed(match.group(1)).evaluate({})
        if not isinstance(value, int):
            raise ExpressionError(f"{name!r}: ({match.group(1)}) is not an integer")
        return str(value)

    return _PARENS.sub(arithmetic, _POSITIONAL.sub(positional, name))


def expand_names(values: list[str], fan_out: FanOut | None) -> list[str]:
    """The instance names a fan-in waits for, from a source's point of view (its own
    fan-out, before modifiers): ``$n`` and ``(...)`` evaluated, ``*`` over the innermost
    fan-out's size."""
    found = indexes(fan_out)
    names: list[str] = []
    for value in values:
        name = _substituted(value, found)
        if "*" in name:
            names.extend(name.replace("*", str(i)) for i in range(_glob_size(value, fan_out)))
        else:
            names.append(name)
    return names


def _glob_size(value: str, fan_out: FanOut | None) -> int:
    count = size(fan_out)
    if count is None:
        raise ExpressionError(f"{value!r}: * needs a fan-out")
    return count


def fan_in_slot(values: list[str], fan_out: FanOut | None, me: str) -> tuple[int, int] | None:
    """Where instance ``me`` stands among the names ``values`` expand to, and how many
    there are (``expand_names`` without writing every name: a source of a map of n
    items would write n names, n times over); None if it is not among them."""
    found = indexes(fan_out)
    slot, total = None, 0
    for value in values:
        name = _substituted(value, found)
        if "*" not in name:
            if name == me:
                slot = total
            total += 1
            continue
        count = _glob_size(value, fan_out)
        head, _, tail = name.partition("*")
        middle = me[len(head) : len(me) - len(tail)] if len(me) > len(head) + len(tail) else ""
        if (
            me.startswith(head)
            and me.endswith(tail)
            and middle.isdigit()
            and int(middle) < count
            and name.replace("*", middle) == me
        ):
            slot = total + int(middle)
        total += count
    return None if slot is None else (slot, total)


def check_name_pattern(value: Any) -> None:
    """A fan-in value parses: ``ExpressionError`` if not."""
    if not isinstance(value, str) or not value:
        raise ExpressionError(f"{value!r}: a fan-in value is an instance name")
    _substituted(value, [0] * 10)
