"""The keeper's own SQLite file: every node, every live session, the last zxid.

The tree lives in memory (``tree.py``); this file is its durable copy. A commit writes
what a group of requests changed (each changed node's final row, or its deletion; the
sessions made or ended; the zxid reached) in one transaction, on a thread of its own,
and the replies of the group leave only after it (``server.py``: group commit). At
start the whole tree is read back, so a restarted keeper has every node that any reply
reported, and its zxid carries on from the highest it ever gave.

WAL journal; ``keeper_sync=normal`` makes a commit survive a crash or kill -9 of the
process, ``full`` also a power cut (an fsync per commit, shared by the group). A commit
without an fsync takes tens of microseconds: with ``normal`` it runs on the event loop's
thread (``inline``), which saves two thread wake-ups per group, each of which can cost
milliseconds on a busy machine; with ``full`` it runs on the store's own thread, so the
loop goes on reading requests (the next group) during the fsync. Every
``CHECKPOINT_EVERY`` commits, the WAL is copied into the file (a checkpoint: an fsync) by
a commit run on the store's thread, so that this too happens off the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from .serialization import ACL
from .settings import KeeperSettings
from .tree import Node

log = structlog.get_logger()

# Migration i (0-based) takes the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE nodes (
            path TEXT PRIMARY KEY,
            data BLOB,
            acl BLOB NOT NULL,
            czxid INTEGER NOT NULL,
            mzxid INTEGER NOT NULL,
            ctime INTEGER NOT NULL,
            mtime INTEGER NOT NULL,
            version INTEGER NOT NULL,
            cversion INTEGER NOT NULL,
            aversion INTEGER NOT NULL,
            ephemeral_owner INTEGER NOT NULL,
            pzxid INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            passwd BLOB NOT NULL,
            timeout INTEGER NOT NULL
        )
        """,
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
CHECKPOINT_EVERY = 250  # commits (a few pages of WAL each: about 4 MiB)

_UPSERT_NODE = """
    INSERT INTO nodes (path, data, acl, czxid, mzxid, ctime, mtime, version, cversion,
                       aversion, ephemeral_owner, pzxid)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET
        data = excluded.data, acl = excluded.acl, czxid = excluded.czxid,
        mzxid = excluded.mzxid, ctime = excluded.ctime, mtime = excluded.mtime,
        version = excluded.version, cversion = excluded.cversion,
        aversion = excluded.aversion, ephemeral_owner = excluded.ephemeral_owner,
        pzxid = excluded.pzxid
"""
_NODE_COLUMNS = (
    "path, data, acl, czxid, mzxid, ctime, mtime, version, cversion, aversion, "
    "ephemeral_owner, pzxid"
)

_acl_encoder = msgspec.msgpack.Encoder()
_acl_decoder = msgspec.msgpack.Decoder(list[ACL])

NodeRow = tuple[Any, ...]


def node_row(path: str, node: Node) -> NodeRow:
    """A node as a row, taken on the loop's thread (the node may change right after)."""
    return (
        path,
        node.data,
        _acl_encoder.encode(node.acl),
        node.czxid,
        node.mzxid,
        node.ctime,
        node.mtime,
        node.version,
        node.cversion,
        node.aversion,
        node.ephemeral_owner,
        node.pzxid,
    )


def _node(row: Sequence[Any]) -> tuple[str, Node]:
    path, data, acl, czxid, mzxid, ctime, mtime, version, cversion, aversion, owner, pzxid = row
    node = Node(
        data,
        _acl_decoder.decode(acl),
        czxid,
        ctime,
        owner,
        mzxid=mzxid,
        mtime=mtime,
        pzxid=pzxid,
        version=version,
        cversion=cversion,
        aversion=aversion,
    )
    return path, node


@dataclass
class Changes:
    """What one group of requests changed: written in one transaction."""

    nodes: list[NodeRow] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    sessions: list[tuple[int, bytes, int]] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    zxid: int = 0
    next_session_id: int = 0


@dataclass
class Loaded:
    nodes: list[tuple[str, Node]]
    sessions: list[tuple[int, bytes, int]]
    zxid: int
    next_session_id: int


class StoreFailed(Exception):
    """A commit failed: memory holds changes the file does not, so the keeper stops."""


class Store:
    """The SQLite file, used from one thread of its own (sqlite3 wants one thread)."""

    def __init__(self, settings: KeeperSettings) -> None:
        self.settings = settings
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keeper-store")
        self._db: sqlite3.Connection | None = None
        self._commits = 0  # since the last checkpoint
        self._inline = settings.keeper_sync == "normal"

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> Loaded:
        """Open (or create) the file and read everything in it."""
        loaded: Loaded = await self._run(self._open)
        return loaded

    def _open(self) -> Loaded:
        path = self.settings.keeper_path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # used from one thread at a time: the store's, or (inline) the loop's
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.settings.keeper_sync.upper()}")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # see CHECKPOINT_EVERY
        if self.settings.keeper_start_policy == "wipe":
            db.execute("BEGIN")
            for table in ("nodes", "sessions", "meta"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute("PRAGMA user_version = 0")
            db.execute("COMMIT")
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreFailed(
                f"{path}: schema version {version} is newer than this keeper knows "
                f"({SCHEMA_VERSION}); refusing to open it"
            )
        for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN")
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
            db.execute("COMMIT")
        nodes = [_node(row) for row in db.execute(f"SELECT {_NODE_COLUMNS} FROM nodes")]
        sessions = [
            (int(sid), bytes(passwd), int(timeout))
            for sid, passwd, timeout in db.execute("SELECT id, passwd, timeout FROM sessions")
        ]
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        return Loaded(nodes, sessions, int(meta.get("zxid", 0)), int(meta.get("session", 0)))

    @property
    def inline(self) -> bool:
        """Whether the next commit runs on the caller's thread (``write``), or must go to
        the store's (``commit``): with an fsync, or with a checkpoint due."""
        return self._inline and self._commits < CHECKPOINT_EVERY

    def write(self, changes: Changes) -> None:
        """Commit on the calling thread; a checkpoint after it when one is due."""
        try:
            self._commit(changes)
            self._commits += 1
            if self._commits >= CHECKPOINT_EVERY:
                self._commits = 0
                assert self._db is not None
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreFailed(f"could not commit to {self.settings.keeper_path}: {exc}") from exc

    async def commit(self, changes: Changes) -> None:
        """Commit on the store's thread."""
        await self._run(self.write, changes)

    def _commit(self, changes: Changes) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            if changes.deleted:
                db.executemany("DELETE FROM nodes WHERE path = ?", [(p,) for p in changes.deleted])
            if changes.nodes:
                db.executemany(_UPSERT_NODE, changes.nodes)
            if changes.sessions:
                db.executemany(
                    "INSERT OR REPLACE INTO sessions (id, passwd, timeout) VALUES (?, ?, ?)",
                    changes.sessions,
                )
            if changes.ended:  # after: a session may begin and end in one group
                db.executemany("DELETE FROM sessions WHERE id = ?", [(s,) for s in changes.ended])
            db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [("zxid", changes.zxid), ("session", changes.next_session_id)],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._thread.shutdown(wait=True)
