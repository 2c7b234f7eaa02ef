"""The one exception tree of fum: each kind carries its code and HTTP status."""

from __future__ import annotations


class FumError(Exception):
    """Root of every error fum raises on purpose."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.headers = headers or {}  # sent with its HTTP answer (WWW-Authenticate, ...)


class BadRequest(FumError):
    code = "bad_request"
    http_status = 400


class Unauthorized(FumError):
    code = "unauthorized"
    http_status = 401


class Forbidden(FumError):
    code = "forbidden"
    http_status = 403


class NotFound(FumError):
    code = "not_found"
    http_status = 404


class Conflict(FumError):
    code = "conflict"
    http_status = 409


class TooLarge(FumError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(FumError):
    code = "unsupported_media_type"
    http_status = 415


class Unprocessable(FumError):
    code = "unprocessable"
    http_status = 422


class Overloaded(FumError):
    code = "overloaded"
    http_status = 429


class Unavailable(FumError):
    code = "unavailable"
    http_status = 503


class Timeout(FumError):
    code = "timeout"
    http_status = 504


class UnknownMessage(FumError):
    code = "unknown_message"
    http_status = 400


class UnknownNode(FumError):
    code = "unknown_node"
    http_status = 409


ERRORS_BY_CODE: dict[str, type[FumError]] = {
    cls.code: cls
    for cls in (
        FumError,
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooLarge,
        UnsupportedMediaType,
        Unprocessable,
        Overloaded,
        Unavailable,
        Timeout,
        UnknownMessage,
        UnknownNode,
    )
}


def error_from_code(code: str, message: str) -> FumError:
    """Rebuild the exception a peer reported, so callers catch the same types locally."""
    return ERRORS_BY_CODE.get(code, FumError)(message)
