"""Handler mode: run the FUM loop around a plain ``def handle(params) -> result``."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import fum

DEFAULT_HANDLER = "main:handle"


def load_handler(spec: str) -> Callable[[Any], Any]:
    """Import ``module:function`` from the current directory and return the function."""
    module_name, _, function_name = spec.partition(":")
    if not module_name:
        raise SystemExit(f"fum: bad handler {spec!r}, expected module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name or "handle", None)
    if not callable(handler):
        raise SystemExit(f"fum: {module_name} has no function {function_name or 'handle'!r}")
    return handler


def serve(handler: Callable[[Any], Any]) -> None:
    """Answer calls forever: each call's params go to handler, its return value is the result."""
    fum.Fum.inline = True  # params and result only through fum: they may travel in messages
    while True:
        fum.fum_yield()
        try:
            fum.result(handler(fum.params()))
        except Exception as exc:
            traceback.print_exc()  # the container's log keeps it too
            fum.fail(exc)


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m fum [module:function]`` (default $FUM_HANDLER, then main:handle)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        raise SystemExit(f"usage: python -m fum [module:function]  (default {DEFAULT_HANDLER})")
    spec = args[0] if args else os.environ.get("FUM_HANDLER") or DEFAULT_HANDLER
    handler = load_handler(spec)
    try:
        serve(handler)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
