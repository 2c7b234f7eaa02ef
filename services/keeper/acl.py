"""Access control as ZooKeeper does it: ``world:anyone``, ``digest``, ``ip`` and ``auth``.

A connection carries the ids it has proven: ``ip:<its address>`` from the start, and
``digest:<user>:<base64 sha1 of user:password>`` for each ``addauth digest user:password``
(the auth packet). An ACL entry grants its perms to a matching id; a node with no
entries is open to all (as in ZooKeeper). Creating with the ``auth`` scheme stands for
every digest id the connection has proven (``InvalidACL`` when it has none).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from .exceptions import AuthFailed, InvalidACL, NoAuth
from .serialization import ACL, Id


class Perms:
    READ = 1
    WRITE = 2
    CREATE = 4
    DELETE = 8
    ADMIN = 16
    ALL = 31


ANYONE = Id("world", "anyone")
OPEN_ACL_UNSAFE = [ACL(Perms.ALL, ANYONE)]
READ_ACL_UNSAFE = [ACL(Perms.READ, ANYONE)]


def digest(user_password: str) -> str:
    """The id ``digest`` ACLs name for ``user:password``: ``user:base64(sha1(user:password))``."""
    user = user_password.split(":", 1)[0]
    hashed = hashlib.sha1(user_password.encode("utf-8")).digest()
    return f"{user}:{base64.b64encode(hashed).decode()}"


def authenticate(scheme: str, auth: bytes) -> Id:
    """The id an auth packet proves; ``AuthFailed`` for a scheme this server does not know."""
    if scheme != "digest":
        raise AuthFailed(f"no authentication provider for scheme {scheme!r}")
    return Id("digest", digest(auth.decode("utf-8", "replace")))


def _java_split_count(text: str, sep: str) -> int:
    """How many parts Java's ``String.split`` gives (it drops trailing empty parts)."""
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return len(parts)


def _valid_ip(spec: str) -> bool:
    try:
        ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return False
    return True


def fixup(acls: list[ACL], auth: list[Id]) -> list[ACL]:
    """The ACL a node gets from a create or setACL request; ``InvalidACL`` if malformed.

    Duplicates go; ``auth`` entries become the connection's digest ids.
    """
    unique: list[ACL] = []
    for acl in acls:
        if acl not in unique:
            unique.append(acl)
    if not unique:
        raise InvalidACL("an empty ACL")
    fixed: list[ACL] = []
    for acl in unique:
        scheme, ident = acl.id.scheme, acl.id.id
        if scheme == "world" and ident == "anyone":
            fixed.append(acl)
        elif scheme == "auth":
            ids = [proven for proven in auth if proven.scheme == "digest"]
            if not ids:
                raise InvalidACL("an auth ACL from a connection with no digest id")
            fixed.extend(ACL(acl.perms, proven) for proven in ids)
        elif (scheme == "digest" and _java_split_count(ident, ":") == 2) or (
            scheme == "ip" and _valid_ip(ident)
        ):
            fixed.append(acl)
        else:
            raise InvalidACL(f"an invalid ACL id {scheme}:{ident}")
    return fixed


def _matches(acl_id: Id, proven: Id) -> bool:
    if acl_id.scheme != proven.scheme:
        return False
    if acl_id.scheme == "ip":
        try:
            return ipaddress.ip_address(proven.id) in ipaddress.ip_network(acl_id.id, strict=False)
        except ValueError:
            return False
    return acl_id.id == proven.id


def allowed(acls: list[ACL], perm: int, auth: list[Id]) -> bool:
    if not acls:
        return True
    for acl in acls:
        if acl.perms & perm:
            if acl.id == ANYONE:
                return True
            if any(_matches(acl.id, proven) for proven in auth):
                return True
    return False


def check(acls: list[ACL], perm: int, auth: list[Id]) -> None:
    """``NoAuth`` unless an entry of ``acls`` grants ``perm`` to one of ``auth``."""
    if not allowed(acls, perm, auth):
        raise NoAuth()


def masked(acls: list[ACL]) -> list[ACL]:
    """The ACL as a reader without ADMIN sees it: digest hashes replaced by ``x``."""
    return [
        ACL(acl.perms, Id(acl.id.scheme, acl.id.id.split(":", 1)[0] + ":x"))
        if acl.id.scheme == "digest" and ":" in acl.id.id
        else acl
        for acl in acls
    ]
