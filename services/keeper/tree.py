"""The znode tree in memory: nodes, their ``Stat`` as ZooKeeper fills it, and every check.

Each write method does ZooKeeper's checks in ZooKeeper's order (so that a request that
is wrong in two ways gets the same error from both), then changes the tree, notes the
paths it touched (``dirty``: the store writes them at the next commit) and gives the
watch events it causes, in the order ZooKeeper sends them. A ``Transaction`` undoes
every change of a multi whose later operation failed.

Stat fields (ZooKeeper's DataTree): a new node has czxid = mzxid = pzxid = the zxid of
its create, ctime = mtime = its time, versions 0; ``setData`` sets mzxid and mtime and
increments version; ``setACL`` increments aversion; a child's create or delete sets the
parent's pzxid, and its create counts in the parent's cversion (shown as ZooKeeper
shows it, see ``Node.stat_bytes``). A sequential node's name ends with the parent's
count of child creates before this one, ``%010d``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from . import acl as acls
from .acl import Perms
from .exceptions import (
    BadArguments,
    BadVersion,
    NoChildrenForEphemerals,
    NodeExists,
    NoNode,
    NotEmpty,
    Unimplemented,
)
from .serialization import ACL, STAT, EventType, Id

# the nodes ZooKeeper keeps for itself: they exist from the start and cannot be deleted
ZOOKEEPER = "/zookeeper"
QUOTA = "/zookeeper/quota"
CONFIG = "/zookeeper/config"
SPECIAL = frozenset({"/", ZOOKEEPER, QUOTA, CONFIG})

# create flags (CreateMode)
EPHEMERAL = 1
SEQUENTIAL = 2
CONTAINER = 4
TTL = 5

Event = tuple[int, str]  # (EventType, path)


class Node:
    """One znode: its data, ACL, Stat fields and child names."""

    __slots__ = (
        "acl",
        "aversion",
        "children",
        "ctime",
        "cversion",
        "czxid",
        "data",
        "ephemeral_owner",
        "mtime",
        "mzxid",
        "pzxid",
        "version",
    )

    def __init__(
        self,
        data: bytes | None,
        acl: list[ACL],
        czxid: int,
        ctime: int,
        ephemeral_owner: int = 0,
        *,
        mzxid: int | None = None,
        mtime: int | None = None,
        pzxid: int | None = None,
        version: int = 0,
        cversion: int = 0,
        aversion: int = 0,
    ) -> None:
        self.data = data
        self.acl = acl
        self.czxid = czxid
        self.mzxid = czxid if mzxid is None else mzxid
        self.pzxid = czxid if pzxid is None else pzxid
        self.ctime = ctime
        self.mtime = ctime if mtime is None else mtime
        self.version = version
        self.cversion = cversion
        self.aversion = aversion
        self.ephemeral_owner = ephemeral_owner
        self.children: set[str] = set()

    def copy(self) -> Node:
        twin = Node(
            self.data,
            self.acl,
            self.czxid,
            self.ctime,
            self.ephemeral_owner,
            mzxid=self.mzxid,
            mtime=self.mtime,
            pzxid=self.pzxid,
            version=self.version,
            cversion=self.cversion,
            aversion=self.aversion,
        )
        twin.children = set(self.children)
        return twin

    def stat_bytes(self) -> bytes:
        """The node's ``Stat``, jute-encoded (the hot path of every read).

        ``cversion`` is kept as ZooKeeper keeps it, the count of child creates (the next
        sequential suffix), and shown as ZooKeeper shows it: creates plus deletes,
        ``2 * creates - children`` (DataNode.copyStat).
        """
        children = len(self.children)
        return STAT.pack(
            self.czxid,
            self.mzxid,
            self.ctime,
            self.mtime,
            self.version,
            _int32(self.cversion * 2 - children),
            self.aversion,
            self.ephemeral_owner,
            len(self.data) if self.data else 0,
            children,
            self.pzxid,
        )


def now_ms() -> int:
    return int(time.time() * 1000)


def parent_of(path: str) -> str:
    """The parent's path, as ZooKeeper derives it: up to the last slash ("" is the root)."""
    cut = path.rfind("/")
    return path[:cut] or "/"


# What ZooKeeper's PathUtils refuses in a name: the null character and other controls,
# U+D800-U+F8FF (Java's surrogates and the private use area: everything past the BMP is
# a surrogate pair there) and U+FFF0-U+FFFF.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\U0010ffff]")


def validate_path(path: str) -> None:
    """``BadArguments`` for a path ZooKeeper's PathUtils.validatePath refuses."""
    if not path or path[0] != "/":
        raise BadArguments(f"invalid path {path!r}: must start with /")
    if len(path) == 1:
        return
    if path[-1] == "/":
        raise BadArguments(f"invalid path {path!r}: must not end with /")
    if "//" in path:
        raise BadArguments(f"invalid path {path!r}: an empty node name")
    tail = path[path.rfind("/") :]
    if "/./" in path or "/../" in path or tail in ("/.", "/.."):
        raise BadArguments(f"invalid path {path!r}: relative paths are not allowed")
    if _BAD_CHARS.search(path):
        raise BadArguments(f"invalid path {path!r}: an invalid character")


def _check_version(current: int, expected: int, path: str) -> int:
    if expected != -1 and expected != current:
        raise BadVersion(path)
    return current + 1


def _int32(value: int) -> int:
    """Java int arithmetic: versions wrap as ZooKeeper's do."""
    return (value + 2**31) % 2**32 - 2**31


class Tree:
    """Every znode by path; the ephemerals of each session; what changed since the last
    ``take_dirty``."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.ephemerals: dict[int, dict[str, None]] = {}  # session → its paths, in order
        self.dirty: set[str] = set()
        self._undo: list[tuple[str, Node | None]] | None = None

    @classmethod
    def fresh(cls) -> Tree:
        """The tree of a new ZooKeeper server: ``/`` and ``/zookeeper/{quota,config}``."""
        tree = cls()
        tree.nodes["/"] = Node(b"", list(acls.OPEN_ACL_UNSAFE), 0, 0)
        for path, acl in (
            (ZOOKEEPER, acls.OPEN_ACL_UNSAFE),
            (QUOTA, acls.OPEN_ACL_UNSAFE),
            (CONFIG, acls.READ_ACL_UNSAFE),
        ):
            tree.nodes[path] = Node(b"", list(acl), 0, 0)
            tree.nodes[parent_of(path)].children.add(path.rsplit("/", 1)[1])
        tree.dirty.update(tree.nodes)
        return tree

    @classmethod
    def load(cls, rows: Iterable[tuple[str, Node]]) -> Tree:
        """A tree from stored nodes (children and the ephemeral index are derived)."""
        tree = cls()
        tree.nodes = dict(rows)
        for path, node in sorted(tree.nodes.items(), key=lambda item: item[1].czxid):
            if path != "/":
                tree.nodes[parent_of(path)].children.add(path.rsplit("/", 1)[1])
            if node.ephemeral_owner:
                tree.ephemerals.setdefault(node.ephemeral_owner, {})[path] = None
        return tree

    # ---- reads

    def get(self, path: str) -> Node:
        node = self.nodes.get(path)
        if node is None:
            raise NoNode(path)
        return node

    def read(self, path: str, perm: int, auth: list[Id]) -> Node:
        """The node, if it exists and ``auth`` may ``perm`` it (ZooKeeper's read checks)."""
        node = self.get(path)
        acls.check(node.acl, perm, auth)
        return node

    def descendants(self, path: str) -> int:
        """How many nodes are under ``path`` (getAllChildrenNumber)."""
        count = 0
        stack = [path]
        while stack:
            here = stack.pop()
            base = "" if here == "/" else here
            for name in self.nodes[here].children:
                count += 1
                stack.append(f"{base}/{name}")
        return count

    # ---- changes

    def _touch(self, path: str) -> Node | None:
        """Note ``path`` as changed, saving its state first inside a transaction."""
        node = self.nodes.get(path)
        if self._undo is not None:
            self._undo.append((path, node.copy() if node is not None else None))
        self.dirty.add(path)
        return node

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes inside the block stay only if it returns (multi: all or nothing)."""
        assert self._undo is None, "transactions do not nest"
        self._undo = []
        try:
            yield
        except BaseException:
            undo, self._undo = self._undo, None
            for path, saved in reversed(undo):
                self._restore(path, saved)
            raise
        self._undo = None

    def _restore(self, path: str, saved: Node | None) -> None:
        current = self.nodes.get(path)
        if current is not None and current.ephemeral_owner:
            self.ephemerals.get(current.ephemeral_owner, {}).pop(path, None)
        if saved is None:
            self.nodes.pop(path, None)
        else:
            self.nodes[path] = saved
            if saved.ephemeral_owner:
                self.ephemerals.setdefault(saved.ephemeral_owner, {})[path] = None

    def create(
        self,
        path: str,
        data: bytes | None,
        acl: list[ACL],
        flags: int,
        session_id: int,
        auth: list[Id],
        zxid: int,
        mtime: int,
    ) -> tuple[str, Node, list[Event]]:
        """Create a node: its final path (sequential names get their suffix), the node,
        and the events (NodeCreated on it, then NodeChildrenChanged on its parent)."""
        if flags in (CONTAINER, TTL, TTL | SEQUENTIAL):
            raise Unimplemented(f"create flags {flags}: containers and TTLs are not served")
        if flags not in (0, EPHEMERAL, SEQUENTIAL, EPHEMERAL | SEQUENTIAL):
            raise BadArguments(f"no create mode has flags {flags}")
        if path.rfind("/") < 0 or "\0" in path:
            raise BadArguments(path)
        parent_path = parent_of(path)
        fixed = acls.fixup(acl, auth)
        parent = self.get(parent_path)
        acls.check(parent.acl, Perms.CREATE, auth)
        if flags & SEQUENTIAL:
            path = f"{path}{parent.cversion:010d}"
        validate_path(path)
        if path in self.nodes:
            raise NodeExists(path)
        if parent.ephemeral_owner:
            raise NoChildrenForEphemerals(path)
        owner = session_id if flags & EPHEMERAL else 0
        self._touch(parent_path)
        self._touch(path)
        node = Node(data, fixed, zxid, mtime, owner)
        self.nodes[path] = node
        parent.children.add(path[path.rfind("/") + 1 :])
        parent.cversion = _int32(parent.cversion + 1)
        parent.pzxid = zxid
        if owner:
            self.ephemerals.setdefault(owner, {})[path] = None
        return (
            path,
            node,
            [(EventType.NODE_CREATED, path), (EventType.NODE_CHILDREN_CHANGED, parent_path)],
        )

    def delete(self, path: str, version: int, auth: list[Id], zxid: int) -> list[Event]:
        """Delete a childless node: events NodeDeleted on it, NodeChildrenChanged on its
        parent."""
        if path.rfind("/") < 0 or "\0" in path or path in SPECIAL:
            raise BadArguments(path)
        parent_path = parent_of(path)
        parent = self.get(parent_path)
        acls.check(parent.acl, Perms.DELETE, auth)
        node = self.get(path)
        _check_version(node.version, version, path)
        if node.children:
            raise NotEmpty(path)
        return self._remove(path, node, parent_path, parent, zxid)

    def _remove(
        self, path: str, node: Node, parent_path: str, parent: Node, zxid: int
    ) -> list[Event]:
        self._touch(parent_path)
        self._touch(path)
        del self.nodes[path]
        parent.children.discard(path[path.rfind("/") + 1 :])
        if zxid > parent.pzxid:
            parent.pzxid = zxid
        if node.ephemeral_owner:
            owned = self.ephemerals.get(node.ephemeral_owner)
            if owned is not None:
                owned.pop(path, None)
                if not owned:
                    del self.ephemerals[node.ephemeral_owner]
        return [(EventType.NODE_DELETED, path), (EventType.NODE_CHILDREN_CHANGED, parent_path)]

    def set_data(
        self, path: str, data: bytes | None, version: int, auth: list[Id], zxid: int, mtime: int
    ) -> tuple[Node, list[Event]]:
        validate_path(path)
        node = self.get(path)
        acls.check(node.acl, Perms.WRITE, auth)
        new_version = _check_version(node.version, version, path)
        self._touch(path)
        node.data = data
        node.version = _int32(new_version)
        node.mzxid = zxid
        node.mtime = mtime
        return node, [(EventType.NODE_DATA_CHANGED, path)]

    def set_acl(self, path: str, acl: list[ACL], version: int, auth: list[Id]) -> Node:
        validate_path(path)
        fixed = acls.fixup(acl, auth)
        node = self.get(path)
        acls.check(node.acl, Perms.ADMIN, auth)
        new_version = _check_version(node.aversion, version, path)
        self._touch(path)
        node.acl = fixed
        node.aversion = _int32(new_version)
        return node

    def check(self, path: str, version: int, auth: list[Id]) -> None:
        """The check of a multi: the node exists at ``version`` (-1: any)."""
        validate_path(path)
        node = self.get(path)
        acls.check(node.acl, Perms.READ, auth)
        _check_version(node.version, version, path)

    def kill_session(self, session_id: int, zxid: int) -> list[Event]:
        """Delete every ephemeral of a session that ended, oldest first; their events."""
        events: list[Event] = []
        for path in list(self.ephemerals.get(session_id, ())):
            node = self.nodes.get(path)
            if node is None or node.ephemeral_owner != session_id:
                continue
            parent_path = parent_of(path)
            events.extend(self._remove(path, node, parent_path, self.nodes[parent_path], zxid))
        self.ephemerals.pop(session_id, None)
        return events

    def take_dirty(self) -> list[tuple[str, Node | None]]:
        """The paths changed since the last call, each with its node now (None: deleted)."""
        dirty, self.dirty = self.dirty, set()
        return [(path, self.nodes.get(path)) for path in dirty]
