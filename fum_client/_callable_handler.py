"""The built-in function that runs Python callables sent by ``fum_client.FunctionExecutor``.

This file is shipped as the function's ``main.py`` and served by ``python3 -m fum
main:handle``; it runs in the sandbox, where only the standard library, ``fum`` and
``cloudpickle`` are importable (never ``fum_client``).

Params (JSON): ``v`` (this protocol), ``py`` (the sender's Python, ``"3.11"``), ``name``
(the callable's name, for people reading calls), ``fnKey`` + ``fn`` (the cloudpickled
callable, base64) and ``args`` (the cloudpickled ``(args, kwargs)``, base64). Result:
``{"pickle": <cloudpickled return value, base64>, "repr": <a short repr, for people>}``.
An exception raised by the callable fails the call with its type, message and traceback.

With ``durable`` (put there by the db: an execution's history), the callable is a
durable coordinator, run by ``fum.durable``: its result is then either its return value
as above or the suspension that makes it wait (docs/DURABLE.md). With ``"out": "json"``
(a trigger's Python condition, whose verdict the db reads: a service never unpickles)
the result is ``{"json": <the return value>}``.
"""

from __future__ import annotations

import base64
import reprlib
import sys
from typing import Any

import cloudpickle

PROTOCOL = 1
PYTHON = "{}.{}".format(*sys.version_info[:2])
_CACHE_MAX = 64

_callables: dict[str, Any] = {}  # fnKey -> callable: a warm sandbox unpickles each once
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 120


def _callable(key: str, pickled: str) -> Any:
    fn = _callables.get(key)
    if fn is None:
        fn = cloudpickle.loads(base64.b64decode(pickled))
        if len(_callables) >= _CACHE_MAX:
            _callables.clear()
        _callables[key] = fn
    return fn


def handle(params: dict[str, Any]) -> dict[str, str]:
    """Unpickle the callable and its arguments, call it, pickle what it returns."""
    if not isinstance(params, dict) or params.get("v") != PROTOCOL:
        raise RuntimeError(
            "this function runs callables sent by fum_client.FunctionExecutor "
            f"(protocol {PROTOCOL}); it got params it does not understand"
        )
    if params.get("py") != PYTHON:
        raise RuntimeError(
            f"the callable was pickled by Python {params.get('py')} but this runtime runs "
            f"Python {PYTHON}: cloudpickle needs the same Python version on both sides "
            "(give the executor a runtime whose image has your Python version)"
        )
    fn = _callable(params["fnKey"], params["fn"])
    args, kwargs = cloudpickle.loads(base64.b64decode(params["args"]))
    durable = params.get("durable")
    if durable is None:
        value = fn(*args, **kwargs)
    else:
        from fum.durable import coordinate

        suspended, value = coordinate(fn, args, kwargs, durable)
        if suspended:
            return value
    if params.get("out") == "json":
        return {"json": value}
    return {
        "pickle": base64.b64encode(cloudpickle.dumps(value)).decode("ascii"),
        "repr": _repr.repr(value),
    }
