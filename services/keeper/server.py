"""The keeper: ZooKeeper's request processing over the tree, sessions and watches.

Requests apply to the tree in memory in the order they arrive, one at a time (so writes
are linearizable), and each write takes the next zxid. Replies, and the watch events
fired before them, go out in that same order, but never ahead of the writes they may
reveal: while a write is not yet durable, everything queued after it waits (group
commit). The writes that arrive while one commit runs form the next one, so a busy
keeper pays one SQLite transaction for many writes. As in ZooKeeper, a write that fails
(NoNode, BadVersion, ...) still takes a zxid, and a session's creation and end are
writes too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from services.common.metrics import register

from . import acl as acls
from . import metrics
from .acl import Perms
from .connection import Connection
from .exceptions import (
    AuthFailed,
    BadArguments,
    KeeperError,
    MarshallingError,
    NoNode,
    ReconfigDisabled,
    RuntimeInconsistency,
)
from .serialization import (
    INT,
    MULTI_END,
    PING_XID,
    Auth,
    CheckVersion,
    Close,
    ConnectRequest,
    ConnectResponse,
    Create,
    Create2,
    Delete,
    EventType,
    Exists,
    GetACL,
    GetAllChildrenNumber,
    GetChildren,
    GetChildren2,
    GetData,
    GetEphemerals,
    Multi,
    MultiHeader,
    OpCode,
    Ping,
    Reconfig,
    Request,
    SetACL,
    SetData,
    SetWatches,
    SetWatches2,
    Sync,
    Writer,
    frame,
    reply,
    write_acls,
)
from .session import Session, Sessions
from .settings import KeeperSettings
from .store import Changes, Loaded, Store, StoreFailed, node_row
from .tree import Event, Tree, now_ms
from .watches import Watches

log = structlog.get_logger()

VERSION = "3.8.0-fum-keeper"  # what srvr and envi report (the protocol of ZooKeeper 3.8)

Body = bytes | bytearray
Handler = Callable[[Connection, Any, int], Body]


class MultiFailed(KeeperError):
    """A multi with a failed operation: ``body`` holds every operation's result."""

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"multi failed with {code}")
        self.code = code
        self.body = body


class KeeperServer:
    """The tree, the sessions, the watches, and the order replies leave in."""

    def __init__(self, settings: KeeperSettings, store: Store, loaded: Loaded) -> None:
        self.settings = settings
        self.store = store
        self.tree = Tree.load(loaded.nodes) if loaded.nodes else Tree.fresh()
        self.zxid = loaded.zxid
        self.sessions = Sessions(loaded.next_session_id)
        for sid, passwd, timeout in loaded.sessions:
            self.sessions.restore(sid, passwd, timeout)
        self.watches = Watches()
        register(metrics.KeeperCollector(self._sizes))
        self.connections: set[Connection] = set()
        self.failure: StoreFailed | None = None
        self.stopped = asyncio.Event()
        # the group commit: replies held until the writes before them are durable
        self._held: list[tuple[Connection, bytes | None]] = []
        self._dirty = bool(self.tree.dirty)
        self._committing = False
        self._commit_soon = False
        self._new_sessions: list[tuple[int, bytes, int]] = []
        self._ended_sessions: list[int] = []
        self._to_flush: set[Connection] = set()
        self._counts = {"requests": 0, "commits": 0}
        self._tasks: set[asyncio.Task[None]] = set()
        orphans = [sid for sid in self.tree.ephemerals if sid not in self.sessions.by_id]
        for sid in orphans:  # ephemerals of a session the file no longer has
            self._dirty = True
            self.tree.kill_session(sid, self.zxid)
        self._handlers: dict[int, Handler] = {
            OpCode.CREATE: self._create,
            OpCode.CREATE2: self._create,
            OpCode.DELETE: self._delete,
            OpCode.EXISTS: self._exists,
            OpCode.GET_DATA: self._get_data,
            OpCode.SET_DATA: self._set_data,
            OpCode.GET_ACL: self._get_acl,
            OpCode.SET_ACL: self._set_acl,
            OpCode.GET_CHILDREN: self._get_children,
            OpCode.GET_CHILDREN2: self._get_children,
            OpCode.SYNC: self._sync,
            OpCode.PING: self._ping,
            OpCode.CHECK: self._check,
            OpCode.MULTI: self._multi,
            OpCode.RECONFIG: self._reconfig,
            OpCode.AUTH: self._auth,
            OpCode.SET_WATCHES: self._set_watches,
            OpCode.SET_WATCHES2: self._set_watches,
            OpCode.GET_EPHEMERALS: self._get_ephemerals,
            OpCode.GET_ALL_CHILDREN_NUMBER: self._get_all_children_number,
            OpCode.CLOSE: self._close,
        }

    # ---- connections

    def opened(self, conn: Connection) -> None:
        limit = self.settings.keeper_max_connections
        if limit and sum(1 for c in self.connections if c.peer == conn.peer) >= limit:
            log.warning("keeper.too_many_connections", peer=conn.peer, limit=limit)
            conn.abort("too many connections from this address")
            return
        self.connections.add(conn)

    def lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._to_flush.discard(conn)
        self.watches.forget(conn)
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None
        conn.session = None

    def connect(self, conn: Connection, request: ConnectRequest, read_only_sent: bool) -> None:
        """The handshake: a new session, or a known one resumed with its password."""
        if request.last_zxid_seen > self.zxid:
            conn.abort(
                f"the client has seen zxid {request.last_zxid_seen:#x}, this keeper is at "
                f"{self.zxid:#x}"
            )
            return
        timeout = min(
            max(request.timeout, self.settings.min_session_timeout),
            self.settings.max_session_timeout,
        )
        if request.session_id == 0:
            self._next_zxid()
            session = self.sessions.create(timeout)
            self._new_sessions.append((session.id, session.passwd, timeout))
            log.debug("keeper.session_created", session=hex(session.id), timeout=timeout)
        else:
            found = self.sessions.by_id.get(request.session_id)
            if found is None or found.ended or found.passwd != request.passwd:
                self._connect_response(conn, None, read_only_sent)
                conn.close_after_replies()
                return
            session = found
            old = session.connection
            if old is not None and old is not conn:
                old.close()  # the session moved to this connection (client reconnect)
            session.timeout = timeout
            session.touch()
        session.connection = conn
        conn.session = session
        self._connect_response(conn, session, read_only_sent)

    def _connect_response(
        self, conn: Connection, session: Session | None, read_only_sent: bool
    ) -> None:
        if session is None:
            response = ConnectResponse(0, 0, 0, bytes(16))
        else:
            response = ConnectResponse(0, session.timeout, session.id, session.passwd)
        w = Writer()
        response.encode(w)
        body = w.out if read_only_sent else w.out[:-1]
        conn.queue(frame(body))

    # ---- requests

    def _next_zxid(self) -> int:
        self.zxid += 1
        self._dirty = True
        return self.zxid

    def handle(self, conn: Connection, xid: int, request: Request) -> None:
        """Apply one request and queue its reply (an error reply if it fails)."""
        session = conn.session
        if session is None or session.ended:
            return  # the session ended while its packets were in flight
        session.touch()
        self._counts["requests"] += 1
        zxid = self._next_zxid() if request.writes else 0
        started = time.perf_counter()
        try:
            body = self._handlers[request.type](conn, request, zxid)
        except MultiFailed as failed:
            # ZooKeeper answers a failed multi with err 0: the errors are in its results
            conn.queue(reply(xid, self.zxid, 0, failed.body))
        except KeeperError as exc:
            conn.queue(reply(xid, self.zxid, exc.code))
            if isinstance(exc, AuthFailed):
                conn.close_after_replies()
        else:
            if request.type == OpCode.PING:
                conn.queue(reply(PING_XID, self.zxid, 0))
            else:
                conn.queue(reply(xid, self.zxid, 0, body))
            if request.type == OpCode.CLOSE:
                conn.close_after_replies()
        finally:
            timer = metrics.BY_OP.get(request.type)
            if timer is not None:
                timer.observe(time.perf_counter() - started)

    def malformed(self, conn: Connection, xid: int, request_type: type[Request]) -> None:
        """A request body that did not decode: MarshallingError, as from ZooKeeper."""
        session = conn.session
        if session is None or session.ended:
            return
        session.touch()
        if request_type.writes:
            self._next_zxid()
        conn.queue(reply(xid, self.zxid, MarshallingError.code))

    def _fire(self, events: list[Event]) -> None:
        for kind, path in events:
            self.watches.trigger(kind, path)

    # ---- writes

    def _create(self, conn: Connection, request: Create, zxid: int) -> Body:
        path, node, events = self.tree.create(
            request.path,
            request.data,
            request.acl,
            request.flags,
            conn.session.id if conn.session else 0,
            conn.auth,
            zxid,
            now_ms(),
        )
        self._fire(events)
        w = Writer()
        w.string(path)
        if isinstance(request, Create2):
            w.raw(node.stat_bytes())
        return w.out

    def _delete(self, conn: Connection, request: Delete, zxid: int) -> Body:
        self._fire(self.tree.delete(request.path, request.version, conn.auth, zxid))
        return b""

    def _set_data(self, conn: Connection, request: SetData, zxid: int) -> Body:
        node, events = self.tree.set_data(
            request.path, request.data, request.version, conn.auth, zxid, now_ms()
        )
        self._fire(events)
        return node.stat_bytes()

    def _set_acl(self, conn: Connection, request: SetACL, zxid: int) -> Body:
        return self.tree.set_acl(request.path, request.acl, request.version, conn.auth).stat_bytes()

    def _check(self, conn: Connection, request: CheckVersion, zxid: int) -> Body:
        self.tree.check(request.path, request.version, conn.auth)
        return b""

    def _reconfig(self, conn: Connection, request: Reconfig, zxid: int) -> Body:
        raise ReconfigDisabled("a single keeper has no ensemble to reconfigure")

    def _multi(self, conn: Connection, request: Multi, zxid: int) -> Body:
        """Every operation or none; events only when all applied, in their order."""
        results: list[tuple[int, bytes]] = []
        events: list[Event] = []
        mtime = now_ms()
        session_id = conn.session.id if conn.session else 0
        failed_at, code = 0, 0
        try:
            with self.tree.transaction():
                for op in request.ops:
                    kind = op.type
                    try:
                        if isinstance(op, Create):
                            path, node, more = self.tree.create(
                                op.path, op.data, op.acl, op.flags, session_id, conn.auth,
                                zxid, mtime,
                            )  # fmt: skip
                            # ZooKeeper 3.8 answers a create2 of a multi as a create
                            w = Writer()
                            w.string(path)
                            results.append((OpCode.CREATE, bytes(w.out)))
                        elif isinstance(op, CheckVersion):
                            self.tree.check(op.path, op.version, conn.auth)
                            results.append((kind, b""))
                            more = []
                        elif isinstance(op, Delete):
                            more = self.tree.delete(op.path, op.version, conn.auth, zxid)
                            results.append((kind, b""))
                        elif isinstance(op, SetData):
                            node, more = self.tree.set_data(
                                op.path, op.data, op.version, conn.auth, zxid, mtime
                            )
                            results.append((kind, node.stat_bytes()))
                        else:  # pragma: no cover - Multi.decode admits no other op
                            raise RuntimeInconsistency(f"op {kind} in a multi")
                    except KeeperError as exc:
                        failed_at, code = len(results), exc.code
                        raise
                    events.extend(more)
        except KeeperError:
            w = Writer()
            for i in range(len(request.ops)):
                err = 0 if i < failed_at else code if i == failed_at else RuntimeInconsistency.code
                MultiHeader(OpCode.ERROR, False, err).encode(w)
                w.raw(INT.pack(err))
            MULTI_END.encode(w)
            raise MultiFailed(code, bytes(w.out)) from None
        self._fire(events)
        w = Writer()
        for kind, body in results:
            MultiHeader(kind, False, 0).encode(w)
            w.raw(body)
        MULTI_END.encode(w)
        return w.out

    def _close(self, conn: Connection, request: Close, zxid: int) -> Body:
        if conn.session is not None:
            self._end_session(conn.session, zxid)
        return b""

    def _end_session(self, session: Session, zxid: int) -> None:
        """A closed or expired session: its ephemerals go (firing their watches)."""
        session.ended = True
        self.sessions.by_id.pop(session.id, None)
        self._ended_sessions.append(session.id)
        self._fire(self.tree.kill_session(session.id, zxid))

    # ---- reads

    def _exists(self, conn: Connection, request: Exists, zxid: int) -> Body:
        if "\0" in request.path:
            raise BadArguments(request.path)
        node = self.tree.nodes.get(request.path)
        if request.watch:
            self.watches.data.add(request.path, conn)
        if node is None:
            raise NoNode(request.path)
        return node.stat_bytes()

    def _get_data(self, conn: Connection, request: GetData, zxid: int) -> Body:
        node = self.tree.read(request.path, Perms.READ, conn.auth)
        if request.watch:
            self.watches.data.add(request.path, conn)
        data = node.data
        if data is None:
            return INT.pack(-1) + node.stat_bytes()
        return INT.pack(len(data)) + data + node.stat_bytes()

    def _get_children(self, conn: Connection, request: GetChildren, zxid: int) -> Body:
        node = self.tree.read(request.path, Perms.READ, conn.auth)
        if request.watch:
            self.watches.children.add(request.path, conn)
        w = Writer()
        w.strings(sorted(node.children))
        if isinstance(request, GetChildren2):
            w.raw(node.stat_bytes())
        return w.out

    def _get_acl(self, conn: Connection, request: GetACL, zxid: int) -> Body:
        node = self.tree.read(request.path, Perms.READ | Perms.ADMIN, conn.auth)
        shown = node.acl
        if not acls.allowed(node.acl, Perms.ADMIN, conn.auth):
            shown = acls.masked(node.acl)
        w = Writer()
        write_acls(w, shown)
        w.raw(node.stat_bytes())
        return w.out

    def _sync(self, conn: Connection, request: Sync, zxid: int) -> Body:
        # One keeper has no followers to catch up: every read already sees every write.
        w = Writer()
        w.string(request.path or None)
        return w.out

    def _ping(self, conn: Connection, request: Ping, zxid: int) -> Body:
        return b""

    def _get_ephemerals(self, conn: Connection, request: GetEphemerals, zxid: int) -> Body:
        owned = self.tree.ephemerals.get(conn.session.id if conn.session else 0, {})
        prefix = request.path.strip()
        paths = [p for p in owned if prefix in ("", "/") or p.startswith(request.path)]
        w = Writer()
        w.strings(paths)
        return w.out

    def _get_all_children_number(
        self, conn: Connection, request: GetAllChildrenNumber, zxid: int
    ) -> Body:
        node = self.tree.read(request.path, Perms.READ, conn.auth)
        del node
        return INT.pack(self.tree.descendants(request.path))

    # ---- session state

    def _auth(self, conn: Connection, request: Auth, zxid: int) -> Body:
        proven = acls.authenticate(request.scheme, request.auth)
        if proven not in conn.auth:
            conn.auth.append(proven)
        return b""

    def _set_watches(self, conn: Connection, request: SetWatches, zxid: int) -> Body:
        """Watches a reconnecting client had: those already outdated fire at once."""
        nodes = self.tree.nodes
        since = request.relative_zxid
        for path in request.data_watches:
            node = nodes.get(path)
            if node is None:
                conn.notify(EventType.NODE_DELETED, path)
            elif node.mzxid > since:
                conn.notify(EventType.NODE_DATA_CHANGED, path)
            else:
                self.watches.data.add(path, conn)
        for path in request.exist_watches:
            if path in nodes:
                conn.notify(EventType.NODE_CREATED, path)
            else:
                self.watches.data.add(path, conn)
        for path in request.child_watches:
            node = nodes.get(path)
            if node is None:
                conn.notify(EventType.NODE_DELETED, path)
            elif node.pzxid > since:
                conn.notify(EventType.NODE_CHILDREN_CHANGED, path)
            else:
                self.watches.children.add(path, conn)
        if isinstance(request, SetWatches2) and (
            request.persistent_watches or request.persistent_recursive_watches
        ):
            log.info("keeper.persistent_watches_ignored", peer=conn.peer)
        return b""

    # ---- the order replies leave in (group commit)

    def send(self, conn: Connection, data: bytes | None) -> None:
        """Queue ``data`` for ``conn`` (None: close it), after every write before it."""
        if self._dirty or self._committing:
            self._held.append((conn, data))
        elif data is None:
            conn.close()
        else:
            conn.write(data)
            self._to_flush.add(conn)

    def kick(self) -> None:
        """After a burst of requests: send what may go now, commit what was written."""
        if self._to_flush:
            for conn in self._to_flush:
                conn.flush()
            self._to_flush.clear()
        if self._dirty and not self._committing and not self._commit_soon:
            self._commit_soon = True
            asyncio.get_running_loop().call_soon(self._start_commit)

    def _take_changes(self) -> Changes:
        changes = Changes(zxid=self.zxid, next_session_id=self.sessions.next_id)
        for path, node in self.tree.take_dirty():
            if node is None:
                changes.deleted.append(path)
            else:
                changes.nodes.append(node_row(path, node))
        changes.sessions, self._new_sessions = self._new_sessions, []
        changes.ended, self._ended_sessions = self._ended_sessions, []
        return changes

    def _start_commit(self) -> None:
        self._commit_soon = False
        if self._committing or not self._dirty or self.failure is not None:
            return
        changes = self._take_changes()
        held, self._held = self._held, []
        self._dirty = False
        if self.store.inline:
            try:
                with metrics.COMMIT_SECONDS.time():
                    self.store.write(changes)
            except StoreFailed as exc:
                self._failed(exc)
                return
            self._counts["commits"] += 1
            self._deliver(held)
            return
        self._committing = True
        task = asyncio.get_running_loop().create_task(self._commit(changes, held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, changes: Changes, held: list[tuple[Connection, bytes | None]]) -> None:
        try:
            with metrics.COMMIT_SECONDS.time():
                await self.store.commit(changes)
        except StoreFailed as exc:
            self._failed(exc)
            return
        finally:
            self._committing = False
        self._counts["commits"] += 1
        self._deliver(held)
        if self._dirty:
            self._start_commit()
        else:
            rest, self._held = self._held, []
            self._deliver(rest)

    def _failed(self, exc: StoreFailed) -> None:
        """The file lost a commit: stop, and send none of the replies it held."""
        log.error("keeper.store_failed", error=str(exc))
        self.failure = exc
        self.stopped.set()

    def _deliver(self, held: list[tuple[Connection, bytes | None]]) -> None:
        touched: dict[Connection, None] = {}
        for conn, data in held:
            if conn.closed:
                continue
            if data is None:
                conn.close()
                touched.pop(conn, None)
            else:
                conn.write(data)
                touched[conn] = None
        for conn in touched:
            conn.flush()

    @property
    def idle(self) -> bool:
        """Nothing waits to be committed or sent."""
        return not (self._dirty or self._committing or self._held)

    # ---- session expiry

    async def expire_sessions(self) -> None:
        """Each tick, end the sessions whose deadline has passed."""
        tick = self.settings.keeper_tick_ms / 1000
        while True:
            await asyncio.sleep(min(tick, 0.25))
            expired = self.sessions.expired()
            for session in expired:
                log.info("keeper.session_expired", session=hex(session.id))
                self._end_session(session, self._next_zxid())
                conn = session.connection
                if conn is not None:
                    conn.session = None
                    conn.close_after_replies()
            if expired:
                self.kick()

    # ---- four-letter words

    def _sizes(self) -> tuple[int, int, int]:
        """Sessions, znodes, watches (for metrics)."""
        watches = self.watches.data, self.watches.children
        count = sum(len(w) for table in watches for w in table.by_path.values())
        return len(self.sessions.by_id), len(self.tree.nodes), count

    def four_letter_word(self, word: str) -> str:
        if word == "ruok":
            return "imok"
        if word == "envi":
            return (
                "Environment:\n"
                f"zookeeper.version={VERSION}\n"
                f"host.name={os.uname().nodename}\n"
                f"keeper.path={self.settings.keeper_path}\n"
            )
        nodes = len(self.tree.nodes)
        return (
            f"Zookeeper version: {VERSION}\n"
            f"Latency min/avg/max: 0/0/0\n"
            f"Received: {self._counts['requests']}\n"
            f"Sent: {self._counts['requests']}\n"
            f"Connections: {len(self.connections)}\n"
            f"Outstanding: {len(self._held)}\n"
            f"Zxid: {self.zxid:#x}\n"
            f"Mode: standalone\n"
            f"Node count: {nodes}\n"
        )

    # ---- stop

    async def drain(self, timeout: float) -> None:
        """Commit what is written and send its replies (up to ``timeout``), then close
        every connection."""

        async def settle() -> None:
            while not self.idle and self.failure is None:
                self._start_commit()
                if not self._tasks:
                    return
                await asyncio.wait(set(self._tasks))

        try:
            await asyncio.wait_for(settle(), timeout)
        except TimeoutError:
            log.warning("keeper.drain_timed_out", held=len(self._held))
        for conn in list(self.connections):
            conn.close()
