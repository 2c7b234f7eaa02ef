"""ZooKeeper's error codes, one exception per code (``KeeperException.Code``).

A request that fails raises one of these; the connection turns it into the reply's
``err``, in one place (``connection.py``).
"""

from __future__ import annotations


class KeeperError(Exception):
    """Root of the errors a request can get; ``code`` goes in the reply header."""

    code = -1  # SystemError

    def __init__(self, message: str = "") -> None:
        super().__init__(message or type(self).__name__)


class RuntimeInconsistency(KeeperError):
    code = -2


class MarshallingError(KeeperError):
    code = -5


class Unimplemented(KeeperError):
    code = -6


class BadArguments(KeeperError):
    code = -8


class ReconfigDisabled(KeeperError):
    code = -123


class NoNode(KeeperError):
    code = -101


class NoAuth(KeeperError):
    code = -102


class BadVersion(KeeperError):
    code = -103


class NoChildrenForEphemerals(KeeperError):
    code = -108


class NodeExists(KeeperError):
    code = -110


class NotEmpty(KeeperError):
    code = -111


class SessionExpired(KeeperError):
    code = -112


class InvalidACL(KeeperError):
    code = -114


class AuthFailed(KeeperError):
    code = -115


OK = 0
