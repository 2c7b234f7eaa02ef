"""The SDK's exceptions: one root, ``FumError``; each kind says what went wrong and where."""

from __future__ import annotations

import builtins
import contextlib
from typing import Any

import msgspec


class FumError(Exception):
    """Root of every error the SDK raises."""


class ConfigError(FumError):
    """The address, key or profile file is unusable."""


class ApiUnreachable(FumError):
    """No answer from the api: nothing listens there, or the connection broke.

    ``maybe_sent`` is False when the request cannot have reached the api (the
    connection was refused, and no earlier attempt went out): only then may a request
    that creates calls be sent again without its ``Idempotency-Key`` (the SDK's always
    have one: with it, they may be sent again whatever happened).
    """

    def __init__(self, url: str, reason: str, maybe_sent: bool = True) -> None:
        super().__init__(f"cannot reach the fum api at {url}: {reason} (is the cluster up?)")
        self.url = url
        self.reason = reason
        self.maybe_sent = maybe_sent


class ApiError(FumError):
    """The api answered with an error status: ``status``, ``code`` and its ``message``."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"


class BadRequest(ApiError):
    """400: the request (a body, a parameter) is invalid."""


class Unauthorized(ApiError):
    """401 or 403: the API key was refused."""


class NotFound(ApiError):
    """404: no such runtime, function or call."""


class Conflict(ApiError):
    """409: the object exists, or is in use."""


class PayloadTooLarge(ApiError):
    """413: the package is larger than the api accepts."""


class TooManyRequests(ApiError):
    """429: the cluster holds as many unfinished calls as it may; try after ``retry_after`` s."""

    retry_after: float = 1.0


class ServerError(ApiError):
    """5xx: the api (or its db) failed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: TooManyRequests,
}


class _ErrorBody(msgspec.Struct):
    code: str = "error"
    message: str = ""


class _ErrorDocument(msgspec.Struct):
    error: _ErrorBody


def api_error(status: int, body: bytes, what: str, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer; ``what`` (``GET /v1/...``) when the body says nothing."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorDocument).error
        code, message = parsed.code, parsed.message
    except msgspec.MsgspecError:
        code = "http_error"
        text = body.decode("utf-8", "replace").strip()
        message = f"{what} failed" + (f": {text[:300]}" if text else "")
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    error = kind(status, code, message or f"{what} failed")
    if isinstance(error, TooManyRequests) and retry_after:
        with contextlib.suppress(ValueError):  # an HTTP date: keep the default
            error.retry_after = max(0.0, float(retry_after))
    return error


class WaitTimeout(FumError, TimeoutError):
    """A wait for calls ended before they finished."""


class CallError(FumError):
    """A call ended ``ERROR`` or ``TIMEOUT``: its number, status, and the error it reported.

    ``error_type`` is the exception's type name as the function reported it
    (``ValueError``); ``remote_traceback`` the traceback printed in the sandbox.
    """

    def __init__(
        self,
        call_num: int,
        function: str,
        status: str,
        error: str | None,
    ) -> None:
        text = (error or "").strip()
        first, _, rest = text.partition("\n")
        kind, sep, message = first.partition(": ")
        looks_typed = bool(sep) and kind.replace(".", "").replace("_", "").isalnum()
        self.call_num = call_num
        self.function = function
        self.status = status
        self.error = error
        self.error_type = kind if looks_typed else None
        self.error_message = message if looks_typed else first
        self.remote_traceback = rest
        summary = "timed out" if status == "TIMEOUT" else "failed"
        detail = first or status
        super().__init__(f"call {call_num} ({function}) {summary}: {detail}")

    def __str__(self) -> str:
        # Not the remote type's __str__ (KeyError's would quote the whole text).
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_call_error, (self.call_num, self.function, self.status, self.error))


def _rebuild_call_error(call_num: int, function: str, status: str, error: str | None) -> CallError:
    return call_error(call_num, function, status, error)


_REMOTE_CLASSES: dict[str, type[CallError]] = {}


def call_error(call_num: int, function: str, status: str, error: str | None) -> CallError:
    """A CallError that is also the remote built-in exception type, when it names one.

    A ``ZeroDivisionError`` raised in the sandbox is then caught by
    ``except ZeroDivisionError`` as well as by ``except fum_client.CallError``.
    """
    plain = CallError(call_num, function, status, error)
    remote = getattr(builtins, plain.error_type or "", None)
    if status != "ERROR" or not (isinstance(remote, type) and issubclass(remote, Exception)):
        return plain
    if issubclass(remote, (UnicodeError, OSError)):
        return plain  # constructors with required arguments, or special layouts
    cls = _REMOTE_CLASSES.get(remote.__name__)
    if cls is None:
        try:
            cls = type(f"Remote{remote.__name__}", (CallError, remote), {"__module__": __name__})
        except TypeError:
            return plain
        _REMOTE_CLASSES[remote.__name__] = cls
    return cls(call_num, function, status, error)
