"""One-shot watches, as ZooKeeper's WatchManager keeps them: by path, per connection.

``getData`` and ``exists`` set data watches (an ``exists`` of a missing node too: it
fires on the create); ``getChildren`` sets child watches. An event fires each watcher
of its path once and forgets them: NodeCreated and NodeDataChanged fire data watches,
NodeChildrenChanged child watches, NodeDeleted both (a connection watching both ways
gets it once). A connection's watches go with it when it closes, as in ZooKeeper; a
client that reconnects sets them again with ``setWatches``.
"""

from __future__ import annotations

from typing import Protocol

from .serialization import EventType


class Watcher(Protocol):
    """What is told of an event: a client connection."""

    watched: set[tuple[bool, str]]  # (child watch?, path): to forget them all on close

    def notify(self, kind: int, path: str) -> None: ...


class WatchTable:
    """The watchers of each path, of one kind (data or child)."""

    def __init__(self, child: bool) -> None:
        self.child = child
        self.by_path: dict[str, dict[Watcher, None]] = {}

    def add(self, path: str, watcher: Watcher) -> None:
        self.by_path.setdefault(path, {})[watcher] = None
        watcher.watched.add((self.child, path))

    def take(self, path: str) -> list[Watcher]:
        watchers = self.by_path.pop(path, None)
        if not watchers:
            return []
        for watcher in watchers:
            watcher.watched.discard((self.child, path))
        return list(watchers)

    def remove(self, path: str, watcher: Watcher) -> None:
        watchers = self.by_path.get(path)
        if watchers is not None:
            watchers.pop(watcher, None)
            if not watchers:
                del self.by_path[path]


class Watches:
    """Data and child watches; ``trigger`` tells each watcher of an event, once."""

    def __init__(self) -> None:
        self.data = WatchTable(child=False)
        self.children = WatchTable(child=True)

    def trigger(self, kind: int, path: str) -> None:
        if kind == EventType.NODE_CHILDREN_CHANGED:
            watchers = self.children.take(path)
        elif kind == EventType.NODE_DELETED:
            watchers = self.data.take(path)
            told = set(watchers)
            watchers.extend(w for w in self.children.take(path) if w not in told)
        else:
            watchers = self.data.take(path)
        for watcher in watchers:
            watcher.notify(kind, path)

    def forget(self, watcher: Watcher) -> None:
        """Drop every watch of a connection that closed."""
        for child, path in list(watcher.watched):
            (self.children if child else self.data).remove(path, watcher)
        watcher.watched.clear()
