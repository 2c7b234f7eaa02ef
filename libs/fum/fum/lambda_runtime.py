"""``python -m fum.lambda_runtime [module:function]``: serve an AWS Lambda handler over FUM.

The handler is ``def lambda_handler(event, context)`` (default ``app:lambda_handler``, as
in unum's apps). A call whose params are unum's payload (``{"Data": {"Source": "http",
"Value": ...}, ...}``) gives the handler its ``Value``; any other params are the event as
they are. The return value is the call's result; an exception fails the call.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import fum
from fum.handler import load_handler, serve

DEFAULT_HANDLER = "app:lambda_handler"


class LambdaContext:
    """The part of Lambda's context object that functions read."""

    def __init__(self, request_id: str, deadline: float | None = None) -> None:
        self.function_name = os.environ.get("FUM_FUNCTION", "")
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"fum:function:{self.function_name}"
        self.aws_request_id = request_id
        self.log_group_name = f"/fum/{self.function_name}"
        self.log_stream_name = request_id
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        if self._deadline is None:
            return 0
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def event_of(params: Any) -> Any:
    """The handler's event: the data of unum's payload, or the params themselves."""
    if isinstance(params, dict) and isinstance(params.get("Data"), dict):
        data = params["Data"]
        if data.get("Source", "http") == "http" and "Value" in data:
            return data["Value"]
    return params


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        raise SystemExit(
            f"usage: python -m fum.lambda_runtime [module:function]  (default {DEFAULT_HANDLER})"
        )
    handler = load_handler(args[0] if args else DEFAULT_HANDLER)

    def handle(params: Any) -> Any:
        return handler(event_of(params), LambdaContext(fum.Fum.current_uuid or ""))

    try:
        serve(handle)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
